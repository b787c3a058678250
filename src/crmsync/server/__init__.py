"""The server edition: one crmsync for a sales team, with a web UI and a job queue.

Each user of the server signs in, connects their own groupware and CRM and owns one
profile of the state store (``users.profile_id``); the sync itself is the same
:class:`crmsync.sync.Syncer` the command line runs. Admins set defaults for every user
and lock settings; what a run uses is the user's settings under those defaults and locks.

The modules, from the bottom up:

- ``accounts``: users, argon2 password hashes, web sessions, CSRF tokens, sign-in rate
  limits.
- ``vault``: each user's connection secrets, encrypted at rest (Fernet keys from the
  environment or a key file; rotation).
- ``settings``: admin defaults and locks merged with a user's own settings (pure).
- ``service``: everything a user or an admin can do, as plain functions on the store;
  the web app and the jobs call these and nothing below them. Also the job itself,
  ``run_job(store, user_id, kind)``, and the scheduler's view of what is due.
- ``queue``: the job queue. Embedded (SQLite, in-process workers, table ``jobs``) or
  Procrastinate on PostgreSQL; the same job code runs in both. At most one queued and
  one running job per user and object.
- ``scheduler``: finds due runs and enqueues each once, however many schedulers run
  (table ``schedule_slots``).
- ``web``: the FastAPI app: JSON API under ``/api`` (with its OpenAPI schema) and
  server-rendered pages with a little htmx, both thin over ``service``.

The sync core (``crmsync.sync``, ``crmsync.plan``) knows nothing of any of this.
"""
