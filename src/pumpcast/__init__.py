"""pumpcast: forecast crypto token markets and their pumps with a transformer.

Forecasts are research tools, not financial advice.
"""

from pumpcast.schema import FEATURES, SCHEMA_VERSION, PumpcastError

__all__ = ["FEATURES", "SCHEMA_VERSION", "PumpcastError", "__version__"]
__version__ = "0.1.0"
