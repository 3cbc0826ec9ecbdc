"""The instance the LiteLLM proxy's config names: `integrations.litellm.proxy.zbilling`.

Built from the environment when the proxy imports it, so a missing ZBILLING_URL or
ZBILLING_SERVICE_KEY stops the proxy at start-up instead of letting unbilled calls through.
"""

from __future__ import annotations

from integrations.litellm.callback import ZBillingCallback
from integrations.litellm.settings import BillingSettings

zbilling = ZBillingCallback(BillingSettings.from_env())
