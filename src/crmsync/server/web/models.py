"""The JSON API's request and response bodies (pydantic): what /openapi.json describes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Kind = Literal["calendar", "contacts", "tasks"]
ChoiceName = Literal["include", "exclude", "ignore-until-change", "ignore-forever", "crm",
                     "groupware"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SignIn(Strict):
    email: str = Field(max_length=254)
    password: str = Field(max_length=1024)


class UserOut(BaseModel):
    id: int
    email: str
    is_admin: bool


class SessionOut(BaseModel):
    user: UserOut
    # Echo it in the X-CSRF-Token header of every unsafe request.
    csrf_token: str


class Error(BaseModel):
    detail: str
    setting: str | None = None


class RunSummary(BaseModel):
    id: int
    status: str
    started_at: str
    finished_at: str | None = None
    error: str | None = None
    mode: str | None = None


class JobOut(BaseModel):
    kind: str
    enabled: bool
    mode: str
    connected: bool
    frequency: int | None
    days: list[str]
    window: str
    last_run: RunSummary | None
    state: Literal["queued", "running"] | None
    review_plan: int | None
    reconnect: list[str] = Field(description="Connections of this object that were "
                                 "refused (e.g. an expired token): reconnect them.")


class JobState(BaseModel):
    state: Literal["queued", "running"]


class SettingField(BaseModel):
    name: str
    type: Literal["choice", "choices", "bool", "int", "float", "text"]
    choices: list[str]
    help: str


class SettingsOut(BaseModel):
    kind: str
    values: dict[str, Any] = Field(description="The effective settings.")
    own: dict[str, Any] = Field(description="What the user set themselves.")
    locked: list[str] = Field(description="Settings an admin locked: shown, not changed.")
    defaults: dict[str, Any] = Field(description="The admin's defaults.")
    fields: list[SettingField]


class SettingsChange(Strict):
    values: dict[str, Any] = Field(description="Settings to change, by name (JSON values).")


class ConnectionOut(BaseModel):
    name: Literal["groupware", "crm"]
    type: str
    endpoints: dict[str, str]
    username: str | None
    error: str | None
    needs_reconnect: bool
    updated_at: str


class DavAccount(Strict):
    calendar_url: str | None = Field(default=None, max_length=2000)
    tasks_url: str | None = Field(default=None, max_length=2000)
    contacts_url: str | None = Field(default=None, max_length=2000)
    username: str | None = Field(default=None, max_length=300)
    password: str | None = Field(default=None, max_length=1000)
    verify_tls: bool = True


class DavServer(Strict):
    url: str = Field(max_length=2000, description="The server, a principal, a home or a "
                     "collection.")
    username: str | None = Field(default=None, max_length=300)
    password: str | None = Field(default=None, max_length=1000)
    verify_tls: bool = True


class Collection(BaseModel):
    url: str
    name: str
    components: list[str]


class Collections(BaseModel):
    calendars: list[Collection]
    addressbooks: list[Collection]


class AuthorizeOut(BaseModel):
    authorize_url: str


class PlanOut(BaseModel):
    id: int
    kind: str
    status: str
    created_at: str
    updated_at: str
    run_id: int | None
    counts: dict[str, int]
    steps: list[dict[str, Any]]


class Choose(Strict):
    keys: list[str] = Field(min_length=1, max_length=10000)
    choice: ChoiceName


class IgnoreOut(BaseModel):
    kind: str
    side: str
    item_id: str
    mode: str
    crm_version: str | None
    gw_version: str | None
    created_at: str


class IgnoreKey(Strict):
    kind: Kind
    side: Literal["crm", "groupware"]
    item_id: str = Field(max_length=2000)


class RunOut(BaseModel):
    id: int
    objects: list[str]
    mode: str
    started_by: str | None
    status: str
    started_at: str
    finished_at: str | None
    counts: dict[str, Any]
    error: str | None
    dry_run: bool
    duration_ms: int | None
    usage: dict[str, Any]
    items: list[dict[str, Any]] | None = None


class AdminSettingOut(BaseModel):
    value: Any = None
    locked: bool


class AdminSettingIn(Strict):
    value: Any = Field(default=None, description="The default; null: only lock the "
                       "built-in default.")
    locked: bool = False


class AdminUserOut(BaseModel):
    id: int
    email: str
    is_admin: bool
    disabled: bool
    last_run: RunSummary | None
    last_error: str | None
    connection_errors: dict[str, str]


class NewUser(Strict):
    email: str = Field(max_length=254)
    password: str = Field(max_length=1024)
    is_admin: bool = False


class UserChange(Strict):
    is_admin: bool


class Paused(Strict):
    paused: bool
