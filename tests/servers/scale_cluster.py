"""The scale-out topology of docs/scale-out.md, on real parts, in network namespaces.

                 10.231.1.0/24 (syncrepl, StartTLS)
    ldap-provider ───────────────────────────────── ldap-consumer
        │   │                                          │   │
        │   └──────────── 10.231.4.0/24 ─── mta2 ──────┼───┘ 10.231.5.0/24
        │                                              │
        └─ 10.231.3.0/24 ─── mta1 ─── 10.231.2.0/24 ───┘

- mta1's policyd reads the consumer first, then the provider; mta2's the provider first, then
  the consumer. Each is a real `policyd serve` (tests/servers/policyd_proc.py).
- Every link is its own veth pair, so one link can be cut without touching the others.

    with Cluster.build(tmp) as c:       # ~2 s: namespaces, PKI, both slapds, both policyds
        c.provider, c.consumer, c.mta["mta1"], c.net.end("ldap-consumer", "mta1")
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers.netns import Netns
from tests.servers.policyd_proc import PolicydProcess
from tests.servers.replication import DirectoryData, ReplSlapd
from tests.servers.slapd import make_pki

PROVIDER, CONSUMER = "ldap-provider", "ldap-consumer"
MTAS = ("mta1", "mta2")
#: Which server each MTA host reads first ("its nearest").
NEAREST = {"mta1": CONSUMER, "mta2": PROVIDER}


@dataclass
class Cluster:
    net: Netns
    dir: Path
    data: DirectoryData
    provider: ReplSlapd
    consumer: ReplSlapd
    mta: dict[str, PolicydProcess] = field(default_factory=dict)
    refresh_s: float = 0.0

    @classmethod
    def build(cls, base: Path, data: DirectoryData | None = None, **policyd_kw: object) -> Cluster:
        data = data or DirectoryData()
        # unix socket paths must stay short (108 bytes): a private dir under /tmp
        sock_dir = Path(tempfile.mkdtemp(prefix="pd-scale-", dir="/tmp"))
        net = Netns.create([PROVIDER, CONSUMER, *MTAS], tag=f"pd{os.getpid()}")
        try:
            pc, cp = net.link(PROVIDER, CONSUMER)
            cm1, m1c = net.link(CONSUMER, "mta1")
            pm1, m1p = net.link(PROVIDER, "mta1")
            pm2, m2p = net.link(PROVIDER, "mta2")
            cm2, m2c = net.link(CONSUMER, "mta2")
            pki = make_pki(base / "pki")
            provider = ReplSlapd.provider(
                base / "provider",
                net=net,
                host=PROVIDER,
                ips=[pc.ip, pm1.ip, pm2.ip],
                pki=pki,
                sock_dir=sock_dir,
                data=data,
            )
            consumer = ReplSlapd.consumer(
                base / "consumer",
                net=net,
                host=CONSUMER,
                ips=[cp.ip, cm1.ip, cm2.ip],
                pki=pki,
                sock_dir=sock_dir,
                provider_ip=pc.ip,
            )
            c = cls(net, sock_dir, data, provider, consumer)
            provider.start()
            consumer.start()
            c.refresh_s = consumer.wait_entries(data.entry_count())
            addr = {
                ("mta1", CONSUMER): cm1.ip,
                ("mta1", PROVIDER): pm1.ip,
                ("mta2", PROVIDER): pm2.ip,
                ("mta2", CONSUMER): cm2.ip,
            }
            for m in MTAS:
                first = NEAREST[m]
                second = PROVIDER if first == CONSUMER else CONSUMER
                c.mta[m] = PolicydProcess(
                    base / m,
                    net,
                    m,
                    servers=[f"ldap://{addr[m, first]}", f"ldap://{addr[m, second]}"],
                    ca_file=pki.ca_cert,
                    sock_dir=sock_dir,
                    **policyd_kw,  # type: ignore[arg-type]
                ).start()
            return c
        except BaseException:
            with contextlib.suppress(Exception):
                for s in ("provider", "consumer"):
                    srv = locals().get(s)
                    if srv is not None:
                        srv.stop()
            net.destroy()
            shutil.rmtree(sock_dir, ignore_errors=True)
            raise

    def server_ip(self, mta: str, server: str) -> str:
        """The address `mta` uses for `server`."""
        return self.net.end(server, mta).ip

    def connected_to(self, mta: str) -> set[str]:
        """Which directory servers the MTA's policyd holds LDAP connections to now (`ss`)."""
        peers = set(self.net.established(mta, 389))
        return {s for s in (PROVIDER, CONSUMER) if self.server_ip(mta, s) in peers}

    def close(self) -> None:
        for p in self.mta.values():
            with contextlib.suppress(Exception):
                p.stop()
        for s in (self.consumer, self.provider):
            with contextlib.suppress(Exception):
                s.stop()
        self.net.destroy()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
