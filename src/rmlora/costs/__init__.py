"""Technology profiles, the ledger of counted work, and the three cost figures."""

from rmlora.costs.counting import counting
from rmlora.costs.figures import CostFigures, cost_figures, ratios
from rmlora.costs.ledger import KEYS, Ledger
from rmlora.costs.profile import TechProfile, load_profile

__all__ = ["KEYS", "CostFigures", "Ledger", "TechProfile", "cost_figures", "counting", "load_profile", "ratios"]
