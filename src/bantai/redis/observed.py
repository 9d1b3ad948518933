"""Observed Redis storages: when a storage is created with instrumentation, it is an
instance of a subclass whose public methods report each call to the hooks
(`bantai.observe`); without, it is the plain class and nothing is wrapped — observing
costs nothing when it is off. The wrappers are generated once per facade class, the same
way for the blocking and the asyncio adapter."""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, cast

from bantai.observe import OperationStart, begin, default_instrumentation, finish
from bantai.storage.options import RedisStorageOptions

S = TypeVar("S")
Counted = tuple[tuple[Any, ...], int]


def _one(args: tuple[Any, ...]) -> Counted:
    return args, 1


def _none(args: tuple[Any, ...]) -> Counted:
    return args, 0


def _keys(args: tuple[Any, ...]) -> Counted:
    """A batch's keys, materialised (an iterator can be read once) and counted."""
    if not args or isinstance(args[0], (str, bytes)):
        return args, 1  # a lone key where keys belong: the method's own check refuses it
    keys = list(args[0]) if isinstance(args[0], Iterable) else args[0]
    return (keys, *args[1:]), len(keys) if isinstance(keys, list) else 0


def _items(args: tuple[Any, ...]) -> Counted:
    if not args:
        return args, 0
    items = args[0]
    if isinstance(items, Mapping):
        return args, len(items)
    pairs = list(items) if isinstance(items, Iterable) else items
    return (pairs, *args[1:]), len(pairs) if isinstance(pairs, list) else 0


# method -> (operation name, how to count its keys)
OBSERVED: dict[str, tuple[str, Callable[[tuple[Any, ...]], Counted]]] = {
    "get": ("get", _one),
    "set": ("set", _one),
    "delete": ("delete", _one),
    "append": ("append", _one),
    "update": ("update", _one),
    "get_many": ("get_many", _keys),
    "set_many": ("set_many", _items),
    "delete_many": ("delete_many", _keys),
    "update_many": ("update_many", _keys),
    "ping": ("ping", _none),
    "_bantai_consume": ("consume", _one),
}


def server_of(client: Any) -> tuple[str | None, int | None, int | None]:
    """(address, port, database) as the client was configured; a cluster's default node."""
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        kwargs = pool.connection_kwargs
        if "path" in kwargs:
            return str(kwargs["path"]), None, kwargs.get("db")
        return kwargs.get("host"), kwargs.get("port"), kwargs.get("db")
    get_default_node = getattr(client, "get_default_node", None)
    node = get_default_node() if get_default_node is not None else None
    if node is not None:
        return node.host, node.port, 0
    return None, None, None


def _sync_wrapper(method: Callable[..., Any], name: str, count: Callable[..., Counted]) -> Any:
    @functools.wraps(method)
    def observed(self: Any, *args: Any, **kwargs: Any) -> Any:
        if count is _one:  # the common case: one key, a start built once per storage
            start = self._starts[name]
        else:
            args, keys = count(args)
            start = OperationStart(name, keys, *self._server)
        observation = begin(self._hooks, start)
        error: BaseException | None = None
        try:
            return method(self, *args, **kwargs)
        except BaseException as exc:
            error = exc
            raise
        finally:
            finish(observation, error)

    return observed


def _async_wrapper(method: Callable[..., Any], name: str, count: Callable[..., Counted]) -> Any:
    @functools.wraps(method)
    async def observed(self: Any, *args: Any, **kwargs: Any) -> Any:
        if count is _one:  # the common case: one key, a start built once per storage
            start = self._starts[name]
        else:
            args, keys = count(args)
            start = OperationStart(name, keys, *self._server)
        observation = begin(self._hooks, start)
        error: BaseException | None = None
        try:
            return await method(self, *args, **kwargs)
        except BaseException as exc:
            error = exc
            raise
        finally:
            finish(observation, error)

    return observed


@functools.cache
def observed_class(base: type, *, asynchronous: bool) -> type:
    """The observed subclass of a facade class (built once)."""
    wrap = _async_wrapper if asynchronous else _sync_wrapper
    namespace: dict[str, Any] = {"__slots__": ("_hooks", "_server", "_starts")}
    for method_name, (operation, count) in OBSERVED.items():
        namespace[method_name] = wrap(getattr(base, method_name), operation, count)
    namespace["__doc__"] = base.__doc__
    return type(f"Observed{base.__name__}", (base,), namespace)


def build(base: type[S], options: RedisStorageOptions, *args: Any, **kwargs: Any) -> S:
    """A facade of class `base` (RedisStorage or AsyncRedisStorage), observed when the
    options (or the process default) name an instrumentation: then an instance of the
    observed subclass, reporting to those hooks."""
    hooks = options.instrumentation or default_instrumentation()
    facade: Any = base
    if hooks is None:
        return cast(S, facade(*args, options, **kwargs))
    asynchronous = inspect.iscoroutinefunction(facade.get)
    storage: Any = observed_class(facade, asynchronous=asynchronous)(*args, options, **kwargs)
    storage._hooks = hooks
    storage._server = server = server_of(storage.client)
    storage._starts = {
        operation: OperationStart(operation, 1, *server)
        for operation, count in OBSERVED.values()
        if count is _one
    }
    if storage.local_cache_stats() is not None:
        # A weak reference: the hooks must not keep the storage alive.
        stats = weakref.WeakMethod(storage.local_cache_stats)

        def read() -> Any:
            method = stats()
            return None if method is None else method()

        hooks.local_cache(read, OperationStart("local_cache", 0, *server))
    return cast(S, storage)
