"""SOGo's own HTTP server ``sogod``, with memcached, its tables in the local PostgreSQL
(Debian: sogo, memcached).

Each start makes a fresh database ``crmsync_sogo_<hex>`` (dropped by ``stop()``) holding
the user source, a table ``sogo_users`` with ``ana`` / ``s3cret`` (plain text); SOGo
creates its profile, folder-info and sessions tables there itself on start-up, and each
calendar's and address book's tables on first use. memcached runs as ``memcache`` on a
free loopback port and ``sogod`` as ``sogo`` on another one, with HOME, pid file and log
in a temporary folder.

SOGo's settings are GNUstep defaults of the ``sogod`` domain, but Debian's sogod also
reads /etc/sogo/sogo.conf, which outranks the user's own defaults file
(``~/GNUstep/Defaults/sogod.plist``): a value set there (database URLs, memcached host)
would win. Only the command line (GNUstep's argument domain, ``-Key value``) outranks it,
so every setting the tests rely on is passed as an argument and nothing on the system is
touched.

The DAV tree is ``/SOGo/dav/ana/``: ``Calendar/personal/`` (VEVENT and VTODO) and
``Contacts/personal/`` exist from the first login; MKCALENDAR below ``Calendar/`` and
extended MKCOL below ``Contacts/`` make more (SOGo takes the new address book's display
name from its URL, not from the MKCOL body).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import time
from pathlib import Path

from . import (
    PASSWORD,
    STARTUP_TIMEOUT,
    USERNAME,
    Postgres,
    ServerStartError,
    Started,
    chown_tree,
    free_port,
    make_folder,
    missing_files,
    spawn,
    stop,
    tail,
    wait_until_ready,
)

PACKAGES = "sogo memcached"
FILES = {"/usr/sbin/sogod": "sogo", "/usr/bin/memcached": "memcached"}


def missing() -> str | None:
    return missing_files(FILES, PACKAGES)


def _plist(value: object) -> str:
    """A value in the OpenStep property-list syntax that GNUstep parses from arguments."""
    if isinstance(value, bool):
        return "YES" if value else "NO"
    if isinstance(value, dict):
        return "{" + " ".join(f"{k} = {_plist(v)};" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_plist(v) for v in value) + ")"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _defaults(pg: Postgres, dbname: str, memcached_port: int) -> dict[str, object]:
    url = f"postgresql://{pg.user}@{pg.host}:{pg.port}/{dbname}"
    return {
        "SOGoProfileURL": f"{url}/sogo_user_profile",
        "OCSFolderInfoURL": f"{url}/sogo_folder_info",
        "OCSSessionsFolderURL": f"{url}/sogo_sessions_folder",
        "OCSEMailAlarmsFolderURL": f"{url}/sogo_alarms_folder",
        "SOGoUserSources": [{
            "type": "sql", "id": "crmsync_users", "viewURL": f"{url}/sogo_users",
            "canAuthenticate": True, "isAddressBook": False,
            "userPasswordAlgorithm": "plain"}],
        "SOGoMemcachedHost": f"127.0.0.1:{memcached_port}",
        "SOGoTimeZone": "UTC",
        "SOGoLanguage": "English",
        "SOGoMailDomain": "example.org",
        # No mail goes anywhere: invitations, alarms and ACL notices are off.
        "SOGoAppointmentSendEMailNotifications": False,
        "SOGoACLsSendEMailNotifications": False,
        "SOGoFoldersSendEMailNotifications": False,
        "SOGoEnableEMailAlarms": False,
        "WOWorkersCount": 1,
    }


def _wait_for_port(port: int, proc, log: Path, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerStartError(f"sogo: memcached exited with {proc.returncode}; "
                                   f"{log}:\n{tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.02)
    raise ServerStartError(f"sogo: memcached did not listen on 127.0.0.1:{port}; "
                           f"{log}:\n{tail(log)}")


def start() -> Started:
    began = time.monotonic()
    pg = Postgres.from_env()
    unreachable = pg.reachable()
    if unreachable:
        raise ServerStartError(f"sogo: {unreachable}")
    folder = make_folder("sogo")
    stack = contextlib.ExitStack()
    stack.callback(shutil.rmtree, folder, ignore_errors=True)
    try:
        dbname = pg.new_database_name("sogo")
        with pg.connect() as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        stack.callback(pg.drop, dbname)
        with pg.connect(dbname) as conn:
            conn.execute("CREATE TABLE sogo_users (c_uid varchar(256) PRIMARY KEY, "
                         "c_name varchar(256), c_password varchar(256), "
                         "c_cn varchar(256), mail varchar(256))")
            conn.execute("INSERT INTO sogo_users VALUES (%s, %s, %s, %s, %s)",
                         (USERNAME, USERNAME, PASSWORD, "Ana Test", "ana@example.org"))

        (folder / "home").mkdir()
        memcached_log = folder / "memcached.log"
        memcached_port = free_port()
        memcached = spawn(["/usr/bin/memcached", "-l", "127.0.0.1", "-p", str(memcached_port),
                           "-U", "0", "-m", "32"], memcached_log, user="memcache")
        stack.callback(stop, memcached, 5.0)
        _wait_for_port(memcached_port, memcached, memcached_log, began + STARTUP_TIMEOUT)

        port = free_port()
        log = folder / "sogo.log"
        log.touch()
        chown_tree(folder, "sogo", "sogo")
        arguments = {"WONoDetach": True, "WOPort": f"127.0.0.1:{port}",
                     "WOLogFile": str(log), "WOPidFile": str(folder / "sogo.pid"),
                     **_defaults(pg, dbname, memcached_port)}
        argv = ["/usr/sbin/sogod"]
        for key, value in arguments.items():
            argv += [f"-{key}", value if isinstance(value, str) and key.startswith("WO")
                     else _plist(value)]
        env = {"HOME": str(folder / "home"), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
               "LANG": "C.UTF-8", "TZ": "UTC"}
        sogod = spawn(argv, folder / "sogod.out", env=env, user="sogo", cwd=folder)
        # sogod's watchdog waits for busy children on SIGTERM; tests need no grace.
        stack.callback(stop, sogod, 1.0)
        base = f"http://127.0.0.1:{port}/"
        home = f"{base}SOGo/dav/{USERNAME}/"
        wait_until_ready("sogo", f"{home}Calendar/", [sogod, memcached],
                         [folder / "sogod.out", log], auth=(USERNAME, PASSWORD))
    except BaseException:
        stack.close()
        raise
    # sogod serves neither DAV nor /.well-known at its root (a web server in front of it
    # usually redirects): its DAV root stands for the server's base URL.
    return Started(name="sogo", base_url=f"{base}SOGo/dav/", principal_url=home,
                   calendar_home_url=f"{home}Calendar/",
                   addressbook_home_url=f"{home}Contacts/",
                   calendar_url=f"{home}Calendar/personal/",
                   addressbook_url=f"{home}Contacts/personal/",
                   seconds=time.monotonic() - began, folder=folder, stop=stack.close)
