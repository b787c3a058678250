"""The two shapes of Salesforce errors.

A call that fails as a whole answers with a list of ``{"message", "errorCode"}`` (plus
``fields`` for record problems), e.g. ``[{"message": "Session expired or invalid",
"errorCode": "INVALID_SESSION_ID"}]``; inside sObject Collections each record carries
``{"statusCode", "message", "fields"}`` instead.
https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/errorcodes.htm
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """The whole call fails with ``status`` and one error."""

    def __init__(self, status: int, code: str, message: str,
                 fields: list[str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.fields = status, code, message, fields

    def body(self) -> list[dict[str, Any]]:
        error: dict[str, Any] = {"message": self.message, "errorCode": self.code}
        if self.fields is not None:
            error["fields"] = self.fields
        return [error]


class RecordError(Exception):
    """One record cannot be saved; the other records of a collection call go on."""

    def __init__(self, code: str, message: str, fields: list[str] | None = None,
                 status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.fields, self.status = code, message, fields, status

    def collection_error(self) -> dict[str, Any]:
        return {"statusCode": self.code, "message": self.message, "fields": self.fields or []}

    def api_error(self) -> ApiError:
        return ApiError(self.status, self.code, self.message, self.fields)


def malformed_query(message: str) -> ApiError:
    return ApiError(400, "MALFORMED_QUERY", message)
