"""Cyrus IMAP's httpd with CalDAV and CardDAV (Debian: cyrus-imapd, cyrus-caldav, sasl2-bin).

``master`` runs in the foreground as root with an imapd.conf and a cyrus.conf of its own
in a temporary folder, and drops to the ``cyrus`` user for its services: ``httpd`` (DAV)
and ``imapd``, each on a free loopback port. Users and passwords are in a sasldb file in
that folder. Cyrus makes a user's DAV homes only once their INBOX exists, so ``ana`` logs
in over IMAP once (``autocreate_quota: 0`` creates the INBOX at login); the first DAV
request then provisions ``/dav/calendars/user/ana/Default/`` (VEVENT and VTODO) and
``/dav/addressbooks/user/ana/Default/``. MKCALENDAR and extended MKCOL make more.

Cyrus logs only to syslog: where nothing listens on /dev/log its messages are lost, and a
failed start shows the master's own output only.
"""

from __future__ import annotations

import contextlib
import imaplib
import shutil
import time
from pathlib import Path

from . import (
    PASSWORD,
    STARTUP_TIMEOUT,
    USERNAME,
    ServerStartError,
    Started,
    chown_tree,
    free_port,
    make_folder,
    missing_files,
    run,
    spawn,
    stop,
    tail,
    wait_until_ready,
)

BIN = Path("/usr/lib/cyrus/bin")
PACKAGES = "cyrus-imapd cyrus-caldav sasl2-bin"
FILES = {str(BIN / "master"): "cyrus-common (cyrus-imapd)", str(BIN / "imapd"): "cyrus-imapd",
         str(BIN / "httpd"): "cyrus-caldav", "/usr/sbin/saslpasswd2": "sasl2-bin"}
# The realm that Cyrus hands SASL is its servername; the users are stored under it.
REALM = "127.0.0.1"


def missing() -> str | None:
    return missing_files(FILES, PACKAGES)


def _imapd_conf(folder: Path) -> str:
    return f"""\
configdirectory: {folder}/config
defaultpartition: default
partition-default: {folder}/spool
proc_path: {folder}/run/proc
mboxname_lockpath: {folder}/run/lock
lmtpsocket: {folder}/run/socket/lmtp
idlesocket: {folder}/run/socket/idle
notifysocket: {folder}/run/socket/notify
sievedir: {folder}/sieve
servername: {REALM}
syslog_prefix: crmsync-cyrus
admins: cyrus
allowplaintext: yes
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: {folder}/sasldb2
sasl_mech_list: PLAIN LOGIN
autocreate_quota: 0
httpmodules: caldav carddav
caldav_create_default: yes
caldav_create_sched: yes
caldav_create_attach: no
unixhierarchysep: no
altnamespace: no
"""


def _cyrus_conf(folder: Path, http_port: int, imap_port: int) -> str:
    conf = folder / "imapd.conf"
    return f"""\
START {{
  recover cmd="ctl_cyrusdb -C {conf} -r"
}}
SERVICES {{
  http cmd="httpd -C {conf}" listen="127.0.0.1:{http_port}" prefork=0 maxchild=20
  imap cmd="imapd -C {conf}" listen="127.0.0.1:{imap_port}" prefork=0 maxchild=5
}}
EVENTS {{
}}
"""


def _login_over_imap(port: int, deadline: float, master, log: Path) -> None:
    last = "no answer"
    while time.monotonic() < deadline:
        if master.poll() is not None:
            raise ServerStartError(f"cyrus: master exited with {master.returncode} while "
                                   f"starting; {log}:\n{tail(log)}")
        try:
            imap = imaplib.IMAP4("127.0.0.1", port, timeout=5)
            try:
                imap.login(USERNAME, PASSWORD)
            finally:
                imap.logout()
            return
        except (OSError, imaplib.IMAP4.error) as exc:
            last = repr(exc)
            time.sleep(0.05)
    raise ServerStartError(f"cyrus: IMAP login as {USERNAME} on port {port} failed within "
                           f"{STARTUP_TIMEOUT:.0f} s (last: {last}); {log}:\n{tail(log)}")


def start() -> Started:
    began = time.monotonic()
    folder = make_folder("cyrus")
    stack = contextlib.ExitStack()
    stack.callback(shutil.rmtree, folder, ignore_errors=True)
    try:
        for sub in ("config/db", "config/socket", "config/log", "config/msg", "config/proc",
                    "config/ptclient", "config/user", "config/quota", "spool", "run/proc",
                    "run/lock", "run/socket", "sieve"):
            (folder / sub).mkdir(parents=True)
        http_port, imap_port = free_port(), free_port()
        (folder / "imapd.conf").write_text(_imapd_conf(folder), encoding="utf-8")
        (folder / "cyrus.conf").write_text(_cyrus_conf(folder, http_port, imap_port),
                                           encoding="utf-8")
        for user in (USERNAME, "cyrus"):
            run(["/usr/sbin/saslpasswd2", "-p", "-c", "-f", str(folder / "sasldb2"),
                 "-u", REALM, user], "cyrus", input=PASSWORD.encode())
        chown_tree(folder, "cyrus", "mail")
        log = folder / "master.log"
        master = spawn([str(BIN / "master"), "-C", str(folder / "imapd.conf"),
                        "-M", str(folder / "cyrus.conf"), "-p", str(folder / "master.pid"),
                        "-D"], log)
        stack.callback(stop, master)
        _login_over_imap(imap_port, began + STARTUP_TIMEOUT, master, log)
        base = f"http://127.0.0.1:{http_port}/"
        calendars = f"{base}dav/calendars/user/{USERNAME}/"
        wait_until_ready("cyrus", calendars, [master], [log], auth=(USERNAME, PASSWORD))
    except BaseException:
        stack.close()
        raise
    return Started(
        name="cyrus", base_url=base,
        principal_url=f"{base}dav/principals/user/{USERNAME}/",
        calendar_home_url=calendars,
        addressbook_home_url=f"{base}dav/addressbooks/user/{USERNAME}/",
        calendar_url=f"{calendars}Default/",
        addressbook_url=f"{base}dav/addressbooks/user/{USERNAME}/Default/",
        seconds=time.monotonic() - began, folder=folder, stop=stack.close)
