"""Stored zero-shot tags: label sets, which items each set tagged, the tags, and the tag filter.

A label set keeps its labels' scaled text vectors for each target modality (and that modality's logit
scale), so items indexed later are tagged from their stored vectors without loading the model.
A set's tags on an item count only while the item is the one that was tagged: ``tagged.version`` is the
item's ``indexed_at`` at tagging time, and re-embedding a changed file gives it a new one. Removing an
item removes its tags (foreign keys, ON DELETE CASCADE).
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa

from xsearch.query.classify import probabilities
from xsearch.storage.db import items as T_items
from xsearch.storage.db import label_sets as T_sets
from xsearch.storage.db import label_vectors as T_lvec
from xsearch.storage.db import tagged as T_tagged
from xsearch.storage.db import tags as T_tags
from xsearch.storage.records import OK

_CHUNK = 900  # ids per IN (...) list (SQLite's oldest variable limit is 999)
_TAG_BATCH = 4096  # items whose vectors are read and tagged at a time


def save_label_set(storage: Any, name: str, labels: Sequence[str], options: dict[str, Any],
                   vectors: dict[str, tuple[float, np.ndarray]]) -> None:
    """Create or replace the set ``name`` (replacing drops its old tags, and only its own)."""
    with storage._write() as conn:
        conn.execute(sa.delete(T_sets).where(T_sets.c.name == name))
        conn.execute(sa.insert(T_sets).values(name=name, labels=json.dumps(list(labels)),
                                              options=json.dumps(options, sort_keys=True), created_at=time.time()))
        for modality, (scale, matrix) in vectors.items():
            conn.execute(sa.insert(T_lvec).values(label_set=name, modality=modality, scale=float(scale),
                                                  data=np.ascontiguousarray(matrix, np.float32).tobytes()))


def get_label_set(storage: Any, name: str) -> dict[str, Any] | None:
    with storage._connect() as conn:
        row = conn.execute(sa.select(T_sets).where(T_sets.c.name == name)).first()
    return None if row is None else {"name": row.name, "labels": json.loads(row.labels),
                                     "options": json.loads(row.options)}


def label_sets(storage: Any) -> list[dict[str, Any]]:
    """Every set: name, labels, options, how many items carry its current tags, and items per label."""
    out = []
    with storage._connect() as conn:
        for row in conn.execute(sa.select(T_sets).order_by(T_sets.c.name)):
            current = _current(row.name)
            tagged = conn.execute(sa.select(sa.func.count()).select_from(T_tagged.join(
                T_items, T_items.c.id == T_tagged.c.item_id)).where(current)).scalar_one()
            per_label = conn.execute(
                sa.select(T_tags.c.label, sa.func.count()).select_from(T_tags.join(
                    T_tagged, sa.and_(T_tagged.c.item_id == T_tags.c.item_id,
                                      T_tagged.c.label_set == T_tags.c.label_set))
                    .join(T_items, T_items.c.id == T_tags.c.item_id))
                .where(current).group_by(T_tags.c.label)).all()
            counts = dict(per_label)
            labels = json.loads(row.labels)
            out.append({"name": row.name, "labels": labels, "options": json.loads(row.options),
                        "items": int(tagged), "counts": {lab: int(counts.get(lab, 0)) for lab in labels}})
    return out


def _current(name: str | None = None) -> sa.ColumnElement[bool]:
    """Rows of `tagged` (joined with items) that describe the item as it is now."""
    cond = sa.and_(T_tagged.c.version == T_items.c.indexed_at, T_items.c.status == OK)
    return cond if name is None else sa.and_(cond, T_tagged.c.label_set == name)


def retag(storage: Any, names: Iterable[str] | None = None) -> int:
    """Tag every item of each set's modalities that has no current tags of that set (new or changed
    since); returns how many items were tagged. Needs no model: the sets hold their text vectors."""
    with storage._connect() as conn:
        sets = conn.execute(sa.select(T_sets)).all()
    done = 0
    for row in sets:
        if names is not None and row.name not in set(names):
            continue
        labels, options = json.loads(row.labels), json.loads(row.options)
        with storage._connect() as conn:
            mats = conn.execute(sa.select(T_lvec).where(T_lvec.c.label_set == row.name)).all()
        for lv in mats:
            matrix = np.frombuffer(lv.data, dtype=np.float32).reshape(len(labels), -1)
            todo = _needing_tags(storage, row.name, lv.modality)
            for start in range(0, len(todo), _TAG_BATCH):
                part = todo[start: start + _TAG_BATCH]
                ids = [i for i, _ in part]
                x = storage.get_vectors(ids)
                if x.shape[1] != matrix.shape[1]:
                    continue  # vectors of another model: nothing meaningful to tag
                probs = probabilities(x * lv.scale, matrix)
                _write(storage, row.name, part, [_pick(labels, p, options) for p in probs])
                done += len(part)
    return done


def _needing_tags(storage: Any, name: str, modality: str) -> list[tuple[int, float | None]]:
    """(id, indexed_at) of the ok items of ``modality`` without current tags of set ``name``."""
    have = sa.select(T_tagged.c.item_id).where(T_tagged.c.label_set == name,
                                               T_tagged.c.item_id == T_items.c.id,
                                               T_tagged.c.version == T_items.c.indexed_at)
    query = (sa.select(T_items.c.id, T_items.c.indexed_at)
             .where(T_items.c.modality == modality, T_items.c.status == OK, ~sa.exists(have))
             .order_by(T_items.c.id))
    with storage._connect() as conn:
        return [(int(r.id), r.indexed_at) for r in conn.execute(query)]


def _pick(labels: Sequence[str], probs: np.ndarray, options: dict[str, Any]) -> list[tuple[str, float]]:
    """The labels kept as tags: the `top` most probable, those under `min_prob` dropped."""
    order = np.argsort(-probs, kind="stable")[: int(options.get("top") or len(labels))]
    floor = options.get("min_prob")
    return [(labels[i], float(probs[i])) for i in order if floor is None or probs[i] >= floor]


def _write(storage: Any, name: str, part: Sequence[tuple[int, float | None]],
           tags: Sequence[list[tuple[str, float]]]) -> None:
    ids = [i for i, _ in part]
    with storage._write() as conn:
        for chunk in _chunks(ids):
            conn.execute(sa.delete(T_tags).where(T_tags.c.label_set == name, T_tags.c.item_id.in_(chunk)))
            conn.execute(sa.delete(T_tagged).where(T_tagged.c.label_set == name, T_tagged.c.item_id.in_(chunk)))
        # An item removed meanwhile would fail the foreign key: tag only those still there.
        alive = set()
        for chunk in _chunks(ids):
            alive |= set(conn.execute(sa.select(T_items.c.id).where(T_items.c.id.in_(chunk))).scalars())
        rows = [(i, v, t) for (i, v), t in zip(part, tags) if i in alive]
        if rows:
            conn.execute(sa.insert(T_tagged), [{"item_id": i, "label_set": name, "version": v} for i, v, _ in rows])
            tag_rows = [{"item_id": i, "label_set": name, "label": lab, "prob": p} for i, _, t in rows for lab, p in t]
            if tag_rows:
                conn.execute(sa.insert(T_tags), tag_rows)


def tagged_ids(storage: Any, labels: Sequence[str], *, among: Iterable[int] | None = None,
               limit: int | None = None) -> set[int] | None:
    """Ids of the items carrying every one of ``labels`` (current tags of any set): of all items, or only
    those of ``among``. With ``limit``: None when every label is carried by more than ``limit`` items (a
    query then tests its candidates instead); otherwise the rarest such label's items are read through
    the label index and the others checked among them."""
    labels = list(dict.fromkeys(labels))
    if among is None and limit is not None:
        base: set[int] | None = None
        for label in labels:
            found = _carrying(storage, label, limit=limit)
            if found is not None:
                base = found
                break
        if base is None:
            return None
        return tagged_ids(storage, labels, among=base) if base else set()
    result: set[int] | None = None if among is None else {int(i) for i in among}
    for label in labels:
        if result is not None and not result:
            break
        found = _carrying(storage, label, among=result)
        result = found if result is None else result & found
    return result or set()


def _carrying(storage: Any, label: str, *, among: set[int] | None = None, limit: int | None = None) -> set[int] | None:
    """Items carrying ``label`` now (of ``among`` when given); None when more than ``limit`` do."""
    def query(label_test: sa.ColumnElement[bool]) -> sa.Select:
        return (sa.select(T_tags.c.item_id).distinct()
                .join(T_tagged, sa.and_(T_tagged.c.item_id == T_tags.c.item_id,
                                        T_tagged.c.label_set == T_tags.c.label_set))
                .join(T_items, T_items.c.id == T_tags.c.item_id)
                .where(label_test, _current()))

    with storage._connect() as conn:
        if among is not None:
            # Driven by the given ids (the primary key), not by the label's index, which would read every
            # item carrying the label: `label || ''` is the same test with no index to pick.
            by_ids = query(T_tags.c.label.concat("") == label)
            return {i for chunk in _chunks(sorted(among))
                    for i in conn.execute(by_ids.where(T_tags.c.item_id.in_(chunk))).scalars()}
        if limit is not None:
            # Whether the label is rare enough, from its index entries alone (a few instructions each,
            # against ~95 for a row joined to `tagged` and `items`): at most limit + 1 of them.
            rows = sa.select(sa.literal(1)).select_from(T_tags).where(T_tags.c.label == label).limit(limit + 1)
            if conn.execute(sa.select(sa.func.count()).select_from(rows.subquery())).scalar_one() > limit:
                return None
        return set(conn.execute(query(T_tags.c.label == label)).scalars())


def tags_of(storage: Any, ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    """Current tags per item id: [{"label", "prob", "set"}], most probable first."""
    out: dict[int, list[dict[str, Any]]] = {}
    with storage._connect() as conn:
        for chunk in _chunks(sorted({int(i) for i in ids})):
            query = (sa.select(T_tags.c.item_id, T_tags.c.label, T_tags.c.prob, T_tags.c.label_set)
                     .join(T_tagged, sa.and_(T_tagged.c.item_id == T_tags.c.item_id,
                                             T_tagged.c.label_set == T_tags.c.label_set))
                     .join(T_items, T_items.c.id == T_tags.c.item_id)
                     .where(T_tags.c.item_id.in_(chunk), _current()))
            for r in conn.execute(query):
                out.setdefault(int(r.item_id), []).append({"label": r.label, "prob": r.prob, "set": r.label_set})
    for tags in out.values():
        tags.sort(key=lambda t: (-t["prob"], t["set"], t["label"]))
    return out


def _chunks(seq: Sequence[int]) -> Iterable[list[int]]:
    seq = list(seq)
    for start in range(0, len(seq), _CHUNK):
        yield seq[start: start + _CHUNK]
