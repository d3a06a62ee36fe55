"""The REST API's price routes: the fleet's and tenants' price overrides (``GET /v1/prices``,
``PUT /v1/prices/{model}``) and the price in force for one model with its source and validity
(``GET /v1/prices/{model}``: a tenant override, then the fleet's, then the genai-prices catalog)."""

from __future__ import annotations

import re

from fleet_agent.contracts import AGENT_ID_PATTERN, ModelName
from pydantic import TypeAdapter, ValidationError

from shared.api import core
from shared.api.bodies import PriceList, PriceQuoteView, PriceUpdate, PriceView
from shared.api.core import TENANT_QUERY, ApiError, Call, Param, Routes
from shared.api.tenancy import query_tenant
from shared.domain.api_keys import Role
from shared.domain.pricing import FLEET_OVERRIDE, TENANT_OVERRIDE, Price, Quote
from shared.store import audit as audit_store
from shared.store import config, price_catalog

_MODEL_NAME: TypeAdapter[str] = TypeAdapter(ModelName)
#: A catalog provider's id (``openai``, ``x-ai``, ``huggingface_groq``).
_PROVIDER = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")

routes = Routes("costs")


def _set_parts(price: Price) -> dict[str, str | None]:
    """The prices an override sets (a part it does not set: None, charged at the input or output price)."""
    parts = (("cache_read_usd", price.cache_read_usd), ("cache_write_usd", price.cache_write_usd),
             ("reasoning_usd", price.reasoning_usd))  # fmt: skip
    return {"input_usd": core.usd(price.input_usd), "output_usd": core.usd(price.output_usd),
            **{name: None if part is None else core.usd(part) for name, part in parts}}  # fmt: skip


def _price_view(model: str, price: Price, source: str) -> PriceView:
    return PriceView.model_validate({"model": model, **_set_parts(price), "source": source})


_CATALOG_PARAMS = (
    Param(
        "catalog", "query", "true: list the price catalog's models (genai-prices, bundled with the code; paginated) "
        "instead of the overrides.", {"type": "boolean", "default": False},
    ),
    Param(
        "provider", "query", "With catalog=true: only this provider's models (openai, anthropic, google, ...).",
        {"type": "string", "pattern": _PROVIDER.pattern},
    ),
    Param(
        "prefix", "query", "With catalog=true: only models whose name, or provider/name, starts with this.",
        {"type": "string", "maxLength": 128},
    ),
    *core.PAGE_PARAMS,
)  # fmt: skip


@routes.get("/v1/prices", PriceList, params=(TENANT_QUERY, *_CATALOG_PARAMS), errors=(400,))
def list_prices(call: Call) -> PriceList:
    """The price overrides: the fleet's, with a tenant's in their place; with ``catalog=true``, the catalog's.

    Models without an override are priced by the catalog (``GET /v1/prices/{model}``: the price in force).
    A tenant-scoped key always gets its own tenant's overrides. ``catalog=true`` lists the catalog's own
    prices (an override wins over them), a page at a time, from data shipped with the code: no reads."""
    if _flag(call, "catalog"):
        return _catalog_page(call)
    for name in ("provider", "prefix", "page_token"):
        if core.query(call.request, name) is not None:
            raise ApiError(400, f"{name} applies to the catalog only: add catalog=true")
    tenant = query_tenant(call) or core.principal(call).tenant
    items = {model: _price_view(model, price, FLEET_OVERRIDE) for model, price in config.read_prices().items()}
    if tenant is not None:
        mine = config.read_tenant(tenant).prices
        items.update({model: _price_view(model, price, TENANT_OVERRIDE) for model, price in mine.items()})
    return PriceList(tenant=tenant, items=[items[model] for model in sorted(items)])


def _flag(call: Call, name: str) -> bool:
    raw = core.query(call.request, name)
    if raw is None or raw.lower() in ("false", "0"):
        return False
    if raw.lower() in ("true", "1"):
        return True
    raise ApiError(400, f"{name} must be true or false")


def _catalog_page(call: Call) -> PriceList:
    """One page of the catalog's models with their prices (``source``: ``catalog:genai-prices@<version>``)."""
    query_tenant(call)  # a bad or foreign ?tenant= is still refused; the catalog is the same for every tenant
    provider = core.query(call.request, "provider")
    if provider is not None and not _PROVIDER.match(provider):
        raise ApiError(400, f"provider must match {_PROVIDER.pattern}")
    prefix = core.query(call.request, "prefix")
    if prefix is not None and len(prefix) > 128:
        raise ApiError(400, "prefix is at most 128 characters")
    after = core.page_token(call.request, lambda name: 0 < len(name) <= 300)
    quotes, more = price_catalog.catalog.listing(
        provider=provider, prefix=prefix, after=after, limit=core.page_size(call.request), at=core.now()
    )
    token = core.encode_page_token(quotes[-1].matched) if more else None
    return PriceList(tenant=None, items=[_catalog_view(q) for q in quotes], next_page_token=token)


def _catalog_view(quote: Quote) -> PriceView:
    tiers = [{"above_input_tokens": start, **_parts(tier)} for start, tier in quote.price.tiers]
    return PriceView.model_validate({"model": quote.matched, **_set_parts(quote.price), "source": quote.source,
                                     "tiers": tiers})  # fmt: skip


_MODEL_PARAM = Param(
    "model",
    "path",
    "The model name; may contain / and : (e.g. openai/gpt-4o, claude-3-5:latest).",
    {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,127}$"},
    required=True,
)
_PRICE_PARAMS = (
    _MODEL_PARAM,
    Param(
        "tenant",
        "query",
        "Set this tenant's override instead of the global price (required for tenant-scoped keys).",
        {"type": "string", "pattern": AGENT_ID_PATTERN},
    ),
)


def _model(call: Call) -> str:
    model: str = call.args["model"].rstrip("/")  # the path converter takes a trailing slash too
    try:
        _MODEL_NAME.validate_python(model)
    except ValidationError:
        raise ApiError(400, f"model {model!r} is not a model name (letters, digits and _.:/@+-, up to 128)") from None
    return model


def _parts(price: Price) -> dict[str, str]:
    """Every part's price in force (a part without its own price is charged at the input or output one)."""
    return {
        "input_usd": core.usd(price.input_usd),
        "output_usd": core.usd(price.output_usd),
        "cache_read_usd": core.usd(price.input_usd if price.cache_read_usd is None else price.cache_read_usd),
        "cache_write_usd": core.usd(price.input_usd if price.cache_write_usd is None else price.cache_write_usd),
        "reasoning_usd": core.usd(price.output_usd if price.reasoning_usd is None else price.reasoning_usd),
    }


def quote_view(model: str, tenant: str | None, quote: Quote) -> PriceQuoteView:
    return PriceQuoteView.model_validate(
        {
            "model": model,
            "tenant": tenant,
            "source": quote.source,
            "matched": quote.matched,
            **_parts(quote.price),
            "valid_from": quote.valid_from,
            "valid_until": quote.valid_until,
            "tiers": [{"above_input_tokens": start, **_parts(tier)} for start, tier in quote.price.tiers],
        }
    )


@routes.get("/v1/prices/<path:model>", PriceQuoteView, params=(_MODEL_PARAM, TENANT_QUERY), errors=(400, 404))
def get_price(call: Call) -> PriceQuoteView:
    """The price a call of this model is charged at now: its source and validity dates.

    A tenant's override, then the fleet's, then the price catalog; 404 when none prices it (its calls
    are counted as unpriced and alert). A tenant-scoped key always gets its own tenant's."""
    model = _model(call)
    tenant = query_tenant(call) or core.principal(call).tenant
    table = config.table_for(config.tenant(tenant)) if tenant is not None else config.fleet_table()
    found = table.quote(model, tenant, core.now())
    if found is None:
        raise ApiError(
            404,
            f"no price for model {model!r} (source unpriced: its calls count $0 and alert); "
            f"set one with PUT /v1/prices/{model}",
        )
    return quote_view(model, tenant, found)


@routes.put("/v1/prices/<path:model>", PriceView, PriceUpdate, Role.ADMIN, params=_PRICE_PARAMS, errors=(400,))
def set_price(call: Call) -> PriceView:
    """Set a model's price per token, globally or (with tenant) for one tenant.

    An override wins over the catalog for every part of a call: cache reads, cache writes and reasoning
    tokens at its ``cache_read_usd`` / ``cache_write_usd`` / ``reasoning_usd`` when it sets them, else at its
    input and output prices. A PUT replaces the whole override."""
    model = _model(call)
    tenant = query_tenant(call)
    principal = core.principal(call)
    if principal.tenant is not None and tenant is None:
        raise ApiError(
            403, f"this API key may only set prices of tenant {principal.tenant}: add ?tenant={principal.tenant}"
        )
    body = core.body(call, PriceUpdate)
    price = Price(body.input_usd, body.output_usd, body.cache_read_usd, body.cache_write_usd, body.reasoning_usd)
    details = {"model": model, **{k: v for k, v in _set_parts(price).items() if v is not None}}
    if tenant is not None:
        config.set_tenant_price(tenant, model, price)
        entry = core.audit(call, "tenant.price.set", f"tenant.{tenant}.{model}", tenant, details, core.now())
    else:
        config.set_price(model, price)
        entry = core.audit(call, "price.set", f"price.{model}", None, details, core.now())
    audit_store.append(entry)
    return _price_view(model, price, TENANT_OVERRIDE if tenant is not None else FLEET_OVERRIDE)
