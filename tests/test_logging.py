"""The log observer's filters, in process."""

from __future__ import annotations

import io

from twisted.logger import LogLevel, PredicateResult

from sscontrold import logging


def _legacy(text: str, namespace: str = "log_legacy") -> dict:
    return {"log_namespace": namespace, "log_format": "{m}", "m": text, "log_level": LogLevel.info}


RETRY = "twisted.application._client_service.ClientService"


def test_retry_chatter_is_left_to_debug():
    try:
        logging.configure("info", "text")
        assert logging.retry_chatter(_legacy("Redis error: could not auth: WRONGPASS")) is PredicateResult.no
        assert logging.retry_chatter(_legacy("Scheduling retry 1 to connect", RETRY)) is PredicateResult.no
        # other lines of the same namespaces pass
        assert logging.retry_chatter(_legacy("QuietSite starting on 8443")) is PredicateResult.maybe
        assert logging.retry_chatter(_legacy("Stopping factory", RETRY)) is PredicateResult.maybe
        logging.configure("debug", "text")
        assert logging.retry_chatter(_legacy("Redis error: could not auth: WRONGPASS")) is PredicateResult.maybe
    finally:
        logging.configure("info", "text")


def test_the_observer_writes_what_passes_and_drops_the_chatter(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    observe = logging.observer()
    observe(_legacy("Scheduling retry 3 to connect", RETRY))
    observe(_legacy("QuietSite starting on 8443"))
    assert "QuietSite starting on 8443" in out.getvalue() and "Scheduling retry" not in out.getvalue()
