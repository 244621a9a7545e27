"""A replicated OpenLDAP pair for tests: a syncprov provider and a syncrepl consumer.

    pki = make_pki(tmp / "pki")                              # tests/servers/slapd.py's test CA
    data = DirectoryData(steady=200, cold=4000)              # generated users + service accounts
    prov = ReplSlapd.provider(tmp / "prov", pki=pki, data=data, net=net, host="ldap-provider",
                              ips=[...], sock_dir=short)
    cons = ReplSlapd.consumer(tmp / "cons", pki=pki, net=net, host="ldap-consumer", ips=[...],
                              provider_ip=..., sock_dir=short)
    prov.start(); cons.start(); cons.wait_entries(data.entry_count())
    prov.modify(ldif_text)       # plain ldapmodify (StartTLS, as the rootdn) run on the provider
    cons.values(dn, "mailLocalAddress")                      # read over ldapi (a unix socket)

- The provider loads the data with slapadd and runs the syncprov overlay (checkpoint and
  session log), with entryCSN/entryUUID indexed.
- The consumer starts empty and replicates everything with syncrepl `refreshAndPersist` over
  StartTLS (certificate checked against the test CA: `tls_reqcert=demand`), bound as the
  replication account; `retry="1 +"` reconnects every second forever after the provider went
  away; writes sent to it are referred to the provider (`updateref`).
- Both listen on ldap:/// inside their network namespace (tests/servers/netns.py; their
  certificates carry every address they have as an IP SAN) and on an ldapi:// socket in
  `sock_dir`, which the test process (outside the namespaces) uses to probe and read them.
- Hooks for sender verification with the "ldap" store: every `conf/ldap/*.schema` file is
  loaded into both servers when present, and every `conf/ldap/acl-*.conf` is included before
  conf/ldap/acl.conf (the writer's rules); the data holds a writer account
  (cn=policyd-writer,ou=services; password WRITER_PASSWORD), and `writer_attribute=` gives it
  write access to one attribute (read for the policyd account) when no shipped file does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.servers.netns import Netns
from tests.servers.slapd import (
    ACL_FILE,
    ADMIN_PASSWORD,
    BASE_DN,
    BIND_DN,
    BIND_PASSWORD,
    MODULE_DIR,
    REPO,
    SCHEMA_DIR,
    SCHEMAS,
    SITE_ACL,
    Pki,
    Slapd,
    SlapdError,
    _run,
    binary,
)

REPLICATOR_DN = f"cn=replicator,ou=services,{BASE_DN}"
REPLICATOR_PASSWORD = "replicator-secret"
WRITER_DN = f"cn=policyd-writer,ou=services,{BASE_DN}"
WRITER_PASSWORD = "writer-secret"
PEOPLE = f"ou=people,{BASE_DN}"
GROUPS = f"ou=groups,{BASE_DN}"

#: Extra schemas shipped with policyd (e.g. the sender-verification attribute), when present.
EXTRA_SCHEMA_GLOB = "conf/ldap/*.schema"


#: Extra access rules shipped with policyd (e.g. the writer's), included before acl.conf.
EXTRA_ACL_GLOB = "conf/ldap/acl-*.conf"


def shipped_schemas() -> list[Path]:
    return sorted(REPO.glob(EXTRA_SCHEMA_GLOB))


def shipped_acls() -> list[Path]:
    return sorted(REPO.glob(EXTRA_ACL_GLOB))


def login(i: int) -> str:
    return f"u{i:05d}"


def own_address(i: int) -> str:
    return f"{login(i)}@example.org"


def alt_address(i: int) -> str:
    return f"{login(i)}.alt@example.net"


@dataclass(frozen=True)
class DirectoryData:
    """Generated users u00000... (mail + one mailLocalAddress each), the policyd read account,
    the replication account and the writer account."""

    users: int = 4200

    def ldif(self) -> str:
        out = [
            f"dn: {BASE_DN}\nobjectClass: top\nobjectClass: dcObject\nobjectClass: organization\n"
            "o: Example Org\ndc: example\n",
            f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n",
            f"dn: {GROUPS}\nobjectClass: organizationalUnit\nou: groups\n",
            f"dn: ou=services,{BASE_DN}\nobjectClass: organizationalUnit\nou: services\n",
        ]
        for dn, pw in (
            (BIND_DN, BIND_PASSWORD),
            (REPLICATOR_DN, REPLICATOR_PASSWORD),
            (WRITER_DN, WRITER_PASSWORD),
        ):
            cn = dn.split(",")[0].split("=")[1]
            out.append(
                f"dn: {dn}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
                f"cn: {cn}\nuserPassword: {pw}\n"
            )
        for i in range(self.users):
            out.append(
                f"dn: uid={login(i)},{PEOPLE}\nobjectClass: inetOrgPerson\n"
                f"objectClass: inetLocalMailRecipient\nuid: {login(i)}\ncn: {login(i)}\n"
                f"sn: {login(i)}\nmail: {own_address(i)}\nmailLocalAddress: {alt_address(i)}\n"
            )
        return "\n".join(out)

    def entry_count(self) -> int:
        return 4 + 3 + self.users


def server_cert(pki: Pki, name: str, ips: Sequence[str]) -> tuple[Path, Path]:
    """A server certificate signed by the test CA with every address in `ips` as an IP SAN."""
    d = pki.dir
    key, csr, crt, ext = (d / f"{name}.{x}" for x in ("key", "csr", "crt", "ext"))
    _run(
        [binary("openssl"), "req", "-new", "-newkey", "ec", "-pkeyopt"]
        + ["ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out", str(csr)]
        + ["-subj", f"/CN={name}"]
    )
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName={','.join(f'IP:{ip}' for ip in ips)},DNS:{name}\n"
    )
    _run(
        [binary("openssl"), "x509", "-req", "-in", str(csr), "-CA", str(pki.ca_cert)]
        + ["-CAkey", str(pki.ca_key), "-CAcreateserial", "-out", str(crt), "-days", "30"]
        + ["-extfile", str(ext)]
    )
    return crt, key


class ReplSlapd(Slapd):
    """A slapd "on" a namespace host, as provider or consumer (see the module docstring).
    Lifecycle (start, kill, freeze, thaw, stop) is Slapd's: the PID is slapd's own."""

    def __init__(
        self,
        workdir: Path,
        *,
        role: str,
        net: Netns,
        host: str,
        ips: Sequence[str],
        pki: Pki,
        sock_dir: Path,
        data: DirectoryData | None = None,
        provider_ip: str = "",
        writer_attribute: str = "",
        extra_schemas: Iterable[Path] | None = None,
    ) -> None:
        if role not in ("provider", "consumer"):
            raise ValueError(role)
        self.role = role
        self.net = net
        self.host = host
        self.ips = list(ips)
        self.provider_ip = provider_ip
        self.writer_attribute = writer_attribute
        self.extra_schemas = list(shipped_schemas() if extra_schemas is None else extra_schemas)
        self.sock = Path(sock_dir) / f"{host}.sock"
        self.cert, self.key = server_cert(pki, host, ips)
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        ldif = None
        if data is not None:
            ldif = workdir / "data.ldif"
            ldif.write_text(data.ldif())
        super().__init__(workdir, ldif=ldif, pki=pki, port=389, ldaps_port=None)

    @classmethod
    def provider(cls, workdir: Path, **kw: object) -> ReplSlapd:
        return cls(workdir, role="provider", **kw)  # type: ignore[arg-type]

    @classmethod
    def consumer(cls, workdir: Path, **kw: object) -> ReplSlapd:
        return cls(workdir, role="consumer", **kw)  # type: ignore[arg-type]

    # -- identity -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"ldap://{self.ips[0]}"

    def url_on(self, ip: str) -> str:
        return f"ldap://{ip}"

    @property
    def ldapi_url(self) -> str:
        return "ldapi://" + urllib.parse.quote(str(self.sock), safe="")

    # -- config ---------------------------------------------------------------------------
    def _slapd_conf(self) -> str:
        w = self.workdir
        lines = [f'include "{SCHEMA_DIR / s}.schema"' for s in SCHEMAS]
        lines += [f'include "{p}"' for p in self.extra_schemas]
        lines += [
            f'modulepath "{MODULE_DIR}"',
            "moduleload back_mdb",
        ]
        if self.role == "provider":
            lines.append("moduleload syncprov")
        lines += [
            f'pidfile "{w / "run" / "slapd.pid"}"',
            f'argsfile "{w / "run" / "slapd.args"}"',
            "loglevel none",
            "threads 8",
            f'TLSCACertificateFile "{self.pki.ca_cert}"',  # type: ignore[union-attr]
            f'TLSCertificateFile "{self.cert}"',
            f'TLSCertificateKeyFile "{self.key}"',
            "database mdb",
            "maxsize 268435456",
            "dbnosync",
            f'suffix "{self.base_dn}"',
            f'rootdn "{self.admin_dn}"',
            f"rootpw {ADMIN_PASSWORD}",
            f'directory "{w / "db"}"',
            "index objectClass eq",
            "index uid,mail,mailLocalAddress,member eq",
            "index entryCSN,entryUUID eq",
            f'limits dn.exact="{REPLICATOR_DN}" size=unlimited time=unlimited',
            # The replication account reads everything; everyone else falls through to the
            # shipped rules (conf/ldap/acl.conf).
            f'access to * by dn.exact="{REPLICATOR_DN}" read by * break',
        ]
        if self.writer_attribute:
            lines.append(
                f"access to attrs={self.writer_attribute} "
                f'by dn.exact="{WRITER_DN}" write by dn.exact="{BIND_DN}" read '
                "by self read by * none"
            )
        lines += [f'include "{p}"' for p in shipped_acls()]
        lines += [f'include "{ACL_FILE}"', f'include "{SITE_ACL}"']
        if self.role == "provider":
            lines += ["overlay syncprov", "syncprov-checkpoint 100 1", "syncprov-sessionlog 1000"]
        else:
            lines += [
                "syncrepl rid=001",
                f"  provider=ldap://{self.provider_ip}:389",
                "  type=refreshAndPersist",
                '  retry="1 +"',
                f'  searchbase="{self.base_dn}"',
                "  bindmethod=simple",
                f'  binddn="{REPLICATOR_DN}"',
                f"  credentials={REPLICATOR_PASSWORD}",
                "  starttls=critical",
                f'  tls_cacert="{self.pki.ca_cert}"',  # type: ignore[union-attr]
                "  tls_reqcert=demand",
                "  timeout=2",
                "  network-timeout=2",
                "  keepalive=3:2:1",
                f"updateref ldap://{self.provider_ip}:389",
            ]
        return "\n".join(lines) + "\n"

    # -- lifecycle ------------------------------------------------------------------------
    def _start(self, timeout: float) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.sock.unlink()  # left by a killed slapd
        urls = f"ldap:/// {self.ldapi_url}"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.net.argv(
                    self.host,
                    [binary("slapd"), "-d", "0", "-f", str(self.conf), "-h", urls],
                ),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        from tests.servers import slapd as _slapd_mod

        _slapd_mod._LIVE[self.proc.pid] = self.proc
        self.frozen = False
        self._wait_ready(timeout)

    def _connection(self, timeout: int = 2, as_admin: bool = True):
        import ldap3

        server = ldap3.Server(self.ldapi_url, get_info=ldap3.NONE, connect_timeout=timeout)
        conn = ldap3.Connection(
            server,
            user=self.admin_dn if as_admin else None,
            password=ADMIN_PASSWORD if as_admin else None,
            receive_timeout=timeout,
            client_strategy=ldap3.SAFE_SYNC,
            raise_exceptions=False,
        )
        conn.open()
        if as_admin:
            ok, result, _, _ = conn.bind()
            if not ok:
                raise SlapdError(f"admin bind over ldapi failed: {result}")
        return conn

    @staticmethod
    def _close(conn) -> None:
        with contextlib.suppress(Exception):
            conn.unbind()
        if conn.socket is not None:
            with contextlib.suppress(Exception):
                conn.socket.close()

    def probe(self, timeout: int = 1) -> None:
        import ldap3

        conn = self._connection(timeout, as_admin=False)
        try:
            ok, result, _, _ = conn.search("", "(objectClass=*)", search_scope=ldap3.BASE)
            if not ok:
                raise SlapdError(f"root DSE read failed: {result}")
        finally:
            self._close(conn)

    # -- data -----------------------------------------------------------------------------
    def values(self, dn: str, attr: str, timeout: int = 2) -> set[str]:
        """The attribute's values of one entry (as the rootdn, over ldapi); empty if none."""
        import ldap3

        conn = self._connection(timeout)
        try:
            ok, result, resp, _ = conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=[attr])
            if not ok:
                if result and result.get("result") == 32:
                    return set()
                raise SlapdError(f"read {dn} failed: {result}")
            vals: set[str] = set()
            for r in resp:
                if r.get("type") == "searchResEntry":
                    vals.update(str(v).lower() for v in r["attributes"].get(attr, []))
            return vals
        finally:
            self._close(conn)

    def count(self, timeout: int = 5) -> int:
        """Number of entries under the suffix (0 if the suffix is not there yet)."""
        import ldap3

        conn = self._connection(timeout)
        try:
            ok, result, resp, _ = conn.search(
                self.base_dn, "(objectClass=*)", ldap3.SUBTREE, attributes=["1.1"]
            )
            if not ok:
                return 0
            return sum(1 for r in resp if r.get("type") == "searchResEntry")
        finally:
            self._close(conn)

    def wait_entries(self, n: int, timeout: float = 30.0) -> float:
        """Wait until the server holds n entries (a consumer's first refresh). Seconds taken."""
        t0 = time.monotonic()
        last = -1
        while time.monotonic() - t0 < timeout:
            with contextlib.suppress(Exception):
                last = self.count()
                if last >= n:
                    return time.monotonic() - t0
            time.sleep(0.05)
        raise SlapdError(
            f"{self.host}: {last} of {n} entries after {timeout} s; log:\n{self.log_text()}"
        )

    def wait_value(
        self, dn: str, attr: str, value: str, present: bool, timeout: float = 10.0
    ) -> float:
        """Poll (every 5 ms, over ldapi) until `value` is (or is no longer) in the entry's
        attribute. Returns the monotonic time at which it was first seen so."""
        deadline = time.monotonic() + timeout
        conn = self._connection(2)
        import ldap3

        try:
            while time.monotonic() < deadline:
                ok, _, resp, _ = conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=[attr])
                seen = time.monotonic()
                vals: set[str] = set()
                for r in resp or []:
                    if r.get("type") == "searchResEntry":
                        vals.update(str(v).lower() for v in r["attributes"].get(attr, []))
                if ok and (value.lower() in vals) == present:
                    return seen
                time.sleep(0.005)
        finally:
            self._close(conn)
        raise SlapdError(f"{self.host}: {attr}={value} present={present} not seen in {timeout} s")

    def modify(self, ldif: str, timeout: float = 15.0) -> None:
        """Plain `ldapmodify` run on this server's host, over StartTLS to its own address,
        bound as the rootdn."""
        p = self.try_modify(ldif, timeout=timeout)
        if p.returncode != 0:
            raise SlapdError(f"ldapmodify on {self.host} failed ({p.returncode}): {p.stderr}")

    def try_modify(
        self,
        ldif: str,
        bind_dn: str = "",
        password: str = ADMIN_PASSWORD,
        timeout: float = 15.0,
    ) -> subprocess.CompletedProcess[str]:
        """The same, returning ldapmodify's result (its exit code is the LDAP result code:
        10 for a referral) instead of raising."""
        assert self.pki is not None
        env = dict(os.environ, LDAPTLS_CACERT=str(self.pki.ca_cert), LDAPTLS_REQCERT="demand")
        return subprocess.run(
            self.net.argv(
                self.host,
                [binary("ldapmodify"), "-x", "-ZZ", "-H", self.url]
                + ["-D", bind_dn or self.admin_dn, "-w", password],
            ),
            input=ldif,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )

    def send(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)


def add_value(dn: str, attr: str, value: str) -> str:
    return f"dn: {dn}\nchangetype: modify\nadd: {attr}\n{attr}: {value}\n-\n"


def delete_value(dn: str, attr: str, value: str) -> str:
    return f"dn: {dn}\nchangetype: modify\ndelete: {attr}\n{attr}: {value}\n-\n"


def user_dn(i: int) -> str:
    return f"uid={login(i)},{PEOPLE}"
