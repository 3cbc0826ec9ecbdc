"""z-billing for the LiteLLM proxy: reserve before each call, commit the actual usage after it.

Enable it in the proxy's config.yaml (`litellm_settings: callbacks:
integrations.litellm.proxy.zbilling`) with ZBILLING_URL and ZBILLING_SERVICE_KEY set; see the
README. `settings` and `usage` do not import LiteLLM; `callback` and `proxy` do.
"""
