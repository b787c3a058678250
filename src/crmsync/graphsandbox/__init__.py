"""A local Microsoft Graph: the part of the v1.0 API crmsync's ``msgraph`` connector uses.

``crmsync graph-sandbox`` runs it; tests use :class:`crmsync.graphsandbox.server.GraphSandbox`.
Modules: store (SQLite: mailboxes' events, contacts, To Do tasks, delta states, sent
mail), recurrence (expanding a patternedRecurrence), resources (the Graph resources, delta
queries, If-Match, the mail Exchange would send), batch (JSON batching), oauth (token and
device-code endpoints, OpenID discovery for MSAL), control (/_sandbox/: faults, throttling,
seeding, the mail log), app (routes, authentication, error bodies), server (the TLS server,
certificates from :mod:`crmsync.sandbox.tls`).
"""
