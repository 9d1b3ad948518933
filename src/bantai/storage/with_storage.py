"""`with_storage`: give a context's rules a storage adapter as `ctx.tools.storage`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from bantai.core.context import Context, extend_context
from bantai.storage.protocol import AsyncKeyValueStorage, KeyValueStorage


class StorageTools:
    """The storages of a context, by name (`tools.storage["sessions"]`). Attribute access
    goes to the default storage, so `tools.storage.get(key)`, as the TypeScript original
    documents it, works as written."""

    def __init__(self, storages: Mapping[str, Any], default: str) -> None:
        self._storages = dict(storages)
        self._default = default

    def __getitem__(self, name: str) -> Any:
        return self._storages[name]

    def __contains__(self, name: object) -> bool:
        return name in self._storages

    def __iter__(self) -> Iterator[str]:
        return iter(self._storages)

    def __len__(self) -> int:
        return len(self._storages)

    def names(self) -> list[str]:
        """The storages' names, in the order they were added."""
        return list(self._storages)

    @property
    def default(self) -> Any:
        """The default storage (the first one added)."""
        return self._storages[self._default]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.default, name)

    def __repr__(self) -> str:
        return f"StorageTools({self.names()}, default={self._default!r})"


def with_storage(
    context: Context,
    storage: KeyValueStorage[Any] | AsyncKeyValueStorage[Any],
    storage_name: str = "default",
) -> Context:
    """A copy of `context` whose `tools.storage` also holds `storage` under `storage_name`
    (storages added earlier keep their names). Works with every bantai storage, sync or
    asyncio. The first storage added is the default one."""
    existing = context.tools.as_dict().get("storage")
    if isinstance(existing, StorageTools):
        storages = {**{n: existing[n] for n in existing}, storage_name: storage}
        default = existing._default
    else:
        storages = {storage_name: storage}
        default = storage_name
    return extend_context(context, tools={"storage": StorageTools(storages, default)})
