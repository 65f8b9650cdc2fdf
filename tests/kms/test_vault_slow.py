"""A slow key service, made real: the OpenBao process is stopped (SIGSTOP), so calls hang until timeout."""

from __future__ import annotations

import os
import signal
import time

import pytest

from kms.vault_transit import VaultTransitProvider
from tests.kms.conftest import vault_config
from tests.support.openbao import OpenBao
from vault.errors import KeyServiceUnavailable


def test_hanging_openbao_times_out_fast_then_recovers(destructive_openbao: OpenBao, key_name: str) -> None:
    provider = VaultTransitProvider(config=vault_config(destructive_openbao, key_name, read_timeout=0.3,
                                                        connect_timeout=0.3, max_retries=0, breaker_failures=2,
                                                        breaker_reset=0.5))
    provider.initialise()
    key, wrapped = provider.generate()
    process = destructive_openbao.process
    assert process is not None
    os.kill(process.pid, signal.SIGSTOP)
    try:
        timings = []
        for _ in range(4):
            started = time.monotonic()
            with pytest.raises(KeyServiceUnavailable):
                provider.unwrap([wrapped])
            timings.append(time.monotonic() - started)
        assert timings[0] < 2.0  # the read timeout, not a hang
        assert max(timings[2:]) < 0.05  # the breaker is open: milliseconds, not timeouts
    finally:
        os.kill(process.pid, signal.SIGCONT)
    deadline = time.monotonic() + 10
    while True:
        try:
            assert provider.unwrap([wrapped]) == [key]
            break
        except KeyServiceUnavailable:
            assert time.monotonic() < deadline
            time.sleep(0.2)
