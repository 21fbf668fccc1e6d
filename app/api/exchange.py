"""Excel and CSV export and import (filled in by the staff-tools work)."""

from fastapi import APIRouter

router = APIRouter()
