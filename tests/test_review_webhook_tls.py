"""Review finding: the webhook's certificate reload (server/webhook/webhook_tls.py) runs in the TLS handshake callback
on the event loop. A certificate path swapped for a FIFO (or a symlink to one) made load_cert_chain block
there until a writer appeared — every handshake and the whole loop with it. What is not a regular file of at
most MAX_PEM_BYTES is now a pair that does not load: the previous certificate keeps serving."""

from __future__ import annotations

import os
import ssl
import threading
from pathlib import Path

import pytest
from support_fleet import make_certs

from nodecompat.server.webhook.webhook_tls import MAX_PEM_BYTES, CertReloader


@pytest.mark.parametrize("swap", ["fifo", "link-to-fifo", "huge"])
def test_a_certificate_swapped_for_a_fifo_or_a_huge_file_keeps_the_old_pair(tmp_path: Path, swap: str) -> None:
    certs = make_certs(tmp_path / "pki")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(certs.cert.read_bytes())
    key.write_bytes(certs.key.read_bytes())
    reloader = CertReloader(str(cert), str(key), interval=0)
    first = reloader.current()
    cert.unlink()
    fifo = tmp_path / "fifo"
    if swap == "huge":
        cert.write_bytes(certs.cert.read_bytes() + b"\n" * (MAX_PEM_BYTES + 1))
    else:
        os.mkfifo(fifo)
        if swap == "fifo":
            os.replace(fifo, cert)
        else:
            cert.symlink_to(fifo)
    got: list[ssl.SSLContext] = []
    t = threading.Thread(target=lambda: got.append(reloader.current()), daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():  # let the blocked open go before failing
        fd = os.open(fifo if swap != "fifo" else cert, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        t.join(10)
        pytest.fail("CertReloader.current() blocked on the swapped certificate file")
    assert got == [first]
    assert reloader.failures == 1 and reloader.reloads == 0
