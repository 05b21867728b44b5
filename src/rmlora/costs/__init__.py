"""Technology profiles, the ledger of counted work, and the three cost figures."""

from rmlora.costs.ledger import KEYS, Ledger
from rmlora.costs.profile import TechProfile, load_profile

__all__ = ["KEYS", "Ledger", "TechProfile", "load_profile"]
