"""Settings are cached; changes through Django's setting_changed signal are seen."""

from __future__ import annotations

from djcelery_ops.conf import ops_settings


def test_settings_fixture__is_seen(settings):
    assert ops_settings.TASK_MAX_RETRIES == 5
    settings.DJCELERY_OPS_TASK_MAX_RETRIES = 2
    assert ops_settings.TASK_MAX_RETRIES == 2


def test_unrelated_setting_change__keeps_the_cache(settings):
    assert ops_settings.RUNS_BATCH_SIZE > 0
    settings.SOME_OTHER_SETTING = 1
    assert "RUNS_BATCH_SIZE" in ops_settings._cache
