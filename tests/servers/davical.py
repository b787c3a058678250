"""DAViCal on Apache with mod_php, its database in the local PostgreSQL (Debian: davical,
apache2, libapache2-mod-php, postgresql-client).

The database is a fresh one per start (``crmsync_davical_<hex>``), built by DAViCal's own
``/usr/share/davical/dba/create-database.sh`` (which also makes the cluster-wide roles
``davical_dba`` and ``davical_app`` if they are missing) and dropped by ``stop()``.
``ana`` / ``s3cret`` goes straight into its ``usr`` and ``principal`` tables.

Apache runs in the foreground (``apache2 -f FOLDER/httpd.conf -DFOREGROUND``, workers as
www-data) on a free loopback port, serving /usr/share/davical/htdocs with a config of its
own. DAViCal reads its configuration only from /etc/davical (``SERVER_NAME-conf.php``
first, then ``config.php``), so each start gives Apache a unique ServerName and writes
``/etc/davical/<that name>-conf.php``, removed again by ``stop()``; writing there needs
root. DAViCal makes no collections for a user created this way, so ``start()`` makes its
usual ones: ``/caldav.php/ana/calendar/`` (MKCALENDAR) and ``/caldav.php/ana/addresses/``
(extended MKCOL).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import time
import uuid
from pathlib import Path

import httpx

from . import (
    PASSWORD,
    USERNAME,
    Postgres,
    ServerStartError,
    Started,
    free_port,
    make_folder,
    missing_files,
    run,
    spawn,
    stop,
    wait_until_ready,
)

PACKAGES = "davical apache2 libapache2-mod-php postgresql-client"
HTDOCS = Path("/usr/share/davical/htdocs")
DBA = Path("/usr/share/davical/dba")
CONFIG_DIR = Path("/etc/davical")
MODULES = Path("/usr/lib/apache2/modules")
FILES = {str(HTDOCS / "caldav.php"): "davical", "/usr/sbin/apache2": "apache2",
         str(MODULES / "mod_mpm_prefork.so"): "apache2", "/usr/bin/psql": "postgresql-client"}


def _php_module() -> str | None:
    found = sorted(glob.glob(str(MODULES / "libphp*.so")))
    return found[-1] if found else None


def missing() -> str | None:
    reason = missing_files(FILES, PACKAGES)
    if reason is None and _php_module() is None:
        reason = f"libapache2-mod-php not installed (apt-get install {PACKAGES})"
    if reason is None and not os.access(CONFIG_DIR, os.W_OK):
        reason = f"{CONFIG_DIR} is not writable (DAViCal reads its configuration only there)"
    return reason


def _httpd_conf(folder: Path, port: int, server_name: str) -> str:
    modules = "\n".join(
        f"LoadModule {name}_module {MODULES}/mod_{name}.so"
        for name in ("mpm_prefork", "authz_core", "mime", "dir", "rewrite", "env"))
    return f"""\
ServerRoot {folder}
{modules}
LoadModule php_module {_php_module()}
Listen 127.0.0.1:{port}
ServerName {server_name}
UseCanonicalName On
User www-data
Group www-data
PidFile {folder}/apache2.pid
DefaultRuntimeDir {folder}/run
Mutex file:{folder}/run default
ErrorLog {folder}/error.log
LogLevel warn
LogFormat "%h %t \\"%r\\" %>s %b" plain
TypesConfig /etc/mime.types
StartServers 2
MinSpareServers 1
MaxSpareServers 4
MaxRequestWorkers 8
KeepAlive On
DocumentRoot {HTDOCS}
AcceptPathInfo On
<Directory />
  AllowOverride None
  Require all denied
</Directory>
<Directory {HTDOCS}>
  DirectoryIndex index.php
  AllowOverride None
  Require all granted
</Directory>
<FilesMatch "\\.php$">
  SetHandler application/x-httpd-php
</FilesMatch>
php_admin_value error_log {folder}/php.log
php_admin_flag log_errors on
php_admin_flag display_errors off
RewriteEngine On
RewriteRule ^/\\.well-known/(caldav|carddav)$ /caldav.php/.well-known/$1 [NC,PT]
"""


def _davical_conf(pg: Postgres, dbname: str) -> str:
    return f"""<?php
// Written by crmsync's tests (tests/servers/davical.py) for one test session.
$c->pg_connect[] = "host={pg.host} port={pg.port} dbname={dbname} user=davical_app";
$c->domain_name = '127.0.0.1';
$c->system_name = 'crmsync test DAViCal';
$c->admin_email = 'admin@example.org';
$c->enable_scheduling = false;
"""


_ADD_USER = f"""
INSERT INTO usr (active, email_ok, updated, username, password, fullname, email)
    VALUES (TRUE, current_date, current_date, '{USERNAME}', '**{PASSWORD}', 'Ana Test',
            'ana@example.org');
INSERT INTO principal (type_id, user_no, displayname, default_privileges)
    SELECT 1, user_no, 'Ana Test', 0::BIT(24) FROM usr WHERE username = '{USERNAME}';
"""

_MKCALENDAR = """<?xml version="1.0" encoding="utf-8"?>
<C:mkcalendar xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">
  <D:set><D:prop>
    <D:displayname>Ana's calendar</D:displayname>
    <C:supported-calendar-component-set><C:comp name="VEVENT"/><C:comp name="VTODO"/>
    </C:supported-calendar-component-set>
  </D:prop></D:set>
</C:mkcalendar>"""

_MKCOL_ADDRESSBOOK = """<?xml version="1.0" encoding="utf-8"?>
<D:mkcol xmlns:D="DAV:" xmlns:CR="urn:ietf:params:xml:ns:carddav">
  <D:set><D:prop>
    <D:resourcetype><D:collection/><CR:addressbook/></D:resourcetype>
    <D:displayname>Ana's contacts</D:displayname>
  </D:prop></D:set>
</D:mkcol>"""


def start() -> Started:
    began = time.monotonic()
    pg = Postgres.from_env()
    unreachable = pg.reachable()
    if unreachable:
        raise ServerStartError(f"davical: {unreachable}")
    folder = make_folder("davical")
    stack = contextlib.ExitStack()
    stack.callback(shutil.rmtree, folder, ignore_errors=True)
    try:
        (folder / "run").mkdir()
        (folder / "php.log").touch()
        shutil.chown(folder / "php.log", "www-data", "www-data")
        dbname = pg.new_database_name("davical")
        stack.callback(pg.drop, dbname)
        run(["sh", str(DBA / "create-database.sh"), dbname, uuid.uuid4().hex], "davical",
            env=pg.env())
        run(["psql", "-qX", "-v", "ON_ERROR_STOP=1", "-c", _ADD_USER, dbname], "davical",
            env=pg.env())

        server_name = f"crmsync-davical-{uuid.uuid4().hex[:12]}"
        conf = CONFIG_DIR / f"{server_name}-conf.php"
        conf.write_text(_davical_conf(pg, dbname), encoding="utf-8")
        conf.chmod(0o644)
        stack.callback(conf.unlink, missing_ok=True)

        port = free_port()
        (folder / "httpd.conf").write_text(_httpd_conf(folder, port, server_name),
                                           encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("APACHE")}
        env.update(LANG="C")
        log = folder / "apache2.out"
        apache = spawn(["/usr/sbin/apache2", "-f", str(folder / "httpd.conf"), "-DFOREGROUND"],
                       log, env=env, cwd=folder)
        stack.callback(stop, apache)
        base = f"http://127.0.0.1:{port}/"
        home = f"{base}caldav.php/{USERNAME}/"
        logs = [log, folder / "error.log", folder / "php.log"]
        wait_until_ready("davical", home, [apache], logs, auth=(USERNAME, PASSWORD))
        calendar, addressbook = f"{home}calendar/", f"{home}addresses/"
        with httpx.Client(auth=(USERNAME, PASSWORD), timeout=30.0) as client:
            for method, url, body in (("MKCALENDAR", calendar, _MKCALENDAR),
                                      ("MKCOL", addressbook, _MKCOL_ADDRESSBOOK)):
                response = client.request(method, url, content=body.encode(), headers={
                    "Content-Type": "application/xml; charset=utf-8"})
                if response.status_code != 201:
                    raise ServerStartError(f"davical: {method} {url} -> "
                                           f"{response.status_code} {response.text[:500]}")
    except BaseException:
        stack.close()
        raise
    return Started(name="davical", base_url=base, principal_url=home, calendar_home_url=home,
                   addressbook_home_url=home, calendar_url=calendar,
                   addressbook_url=addressbook, seconds=time.monotonic() - began,
                   folder=folder, stop=stack.close)
