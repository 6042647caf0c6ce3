"""Profiles and traits: ``/v1/users/{user_id}`` and ``/v1/users/{user_id}/traits``."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Query, Request, Response

from personalization.api.auth import check_scope, require
from personalization.api.deps import platform
from personalization.api.routers.datarights import erase_user
from personalization.core.models import Profile, ProfileIn, ProfilePatch, Trait, TraitIn
from personalization.security.authenticator import Principal

router = APIRouter()

# Scopes of the routes; the dependency runs before path and body validation.
can_read, can_write = [require("read")], [require("profile:write")]


@router.put("/v1/users/{user_id}", response_model=Profile, tags=["profiles"], dependencies=can_write)
async def put_user(user_id: uuid.UUID, body: ProfileIn, request: Request, response: Response) -> Profile:
    """Create or replace the profile (201 when created)."""
    profile, created = await platform(request).profiles.upsert(user_id, body)
    response.status_code = 201 if created else 200
    return profile


@router.get("/v1/users/{user_id}", response_model=Profile, tags=["profiles"], dependencies=can_read)
async def get_user(user_id: uuid.UUID, request: Request) -> Profile:
    """The profile."""
    return await platform(request).profiles.get(user_id)


@router.patch("/v1/users/{user_id}", response_model=Profile, tags=["profiles"], dependencies=can_write)
async def patch_user(user_id: uuid.UUID, body: ProfilePatch, request: Request) -> Profile:
    """Set only the given fields."""
    return await platform(request).profiles.patch(user_id, body)


@router.delete("/v1/users/{user_id}", status_code=204, tags=["profiles"],
               responses={200: {"description": "erase=true: erased everywhere (the erase report)"},
                          202: {"description": "erase=true: erased in PostgreSQL and Redis; rollups or Kafka "
                                               "tombstones pending (the report, Location: /v1/erasures/{id})"}})
async def delete_user(
    user_id: uuid.UUID,
    request: Request,
    erase: bool = Query(False, description="erase the user everywhere (admin); 200, or 202 while parts are pending"),
    principal: Principal = require(None),
) -> Response:
    """Delete the profile (``profile:write``), or with ``erase=true`` erase the user everywhere (``admin``)."""
    if erase:
        return await erase_user(request, user_id, principal)
    check_scope(principal, "profile:write")
    await platform(request).profiles.delete(user_id)
    return Response(status_code=204)


@router.get("/v1/users/{user_id}/traits", response_model=list[Trait], tags=["traits"], dependencies=can_read)
async def list_traits(user_id: uuid.UUID, request: Request) -> list[Trait]:
    """The user's traits."""
    return await platform(request).profiles.list_traits(user_id)


@router.post(
    "/v1/users/{user_id}/traits", response_model=Trait, status_code=201, tags=["traits"], dependencies=can_write
)
async def add_trait(user_id: uuid.UUID, body: TraitIn, request: Request) -> Trait:
    """Record a trait."""
    return await platform(request).profiles.add_trait(user_id, body)


@router.put("/v1/users/{user_id}/traits/{trait_id}", response_model=Trait, tags=["traits"], dependencies=can_write)
async def put_trait(
    user_id: uuid.UUID, trait_id: uuid.UUID, body: TraitIn, request: Request, response: Response
) -> Trait:
    """Create or replace a trait (201 when created)."""
    trait, created = await platform(request).profiles.replace_trait(user_id, trait_id, body)
    response.status_code = 201 if created else 200
    return trait


@router.delete("/v1/users/{user_id}/traits/{trait_id}", status_code=204, tags=["traits"], dependencies=can_write)
async def delete_trait(user_id: uuid.UUID, trait_id: uuid.UUID, request: Request) -> Response:
    """Delete a trait."""
    await platform(request).profiles.delete_trait(user_id, trait_id)
    return Response(status_code=204)
