import pytest

from infra.settings import SettingsError, settings_from


def test_flags_override_the_environment_and_none_means_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROTURN_PORT", "9001")
    monkeypatch.setenv("MICROTURN_MAX_SESSIONS", "3")
    s = settings_from(port=None, max_sessions=5)
    assert s.port == 9001 and s.max_sessions == 5


def test_invalid_values_are_one_readable_error_naming_the_field() -> None:
    with pytest.raises(SettingsError, match=r"invalid settings:(.|\n)*port") as e:
        settings_from(port=99999)
    assert "65535" in str(e.value)


def test_a_playout_hold_above_its_cap_is_refused() -> None:
    assert settings_from(playout_hold_ms=40).playout_hold_ms == 40
    with pytest.raises(SettingsError, match="playout_hold_ms"):
        settings_from(playout_hold_ms=200, playout_max_hold_ms=100)
