"""The read-only dashboard page at /dashboard (filled in by the staff-tools work)."""

from fastapi import APIRouter

router = APIRouter()
