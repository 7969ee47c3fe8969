"""Structural check of an untrusted XGBoost booster (UBJSON bytes) before XGBoost loads it.

XGBoost trusts the node indices of a saved model: a tree whose child index points outside the
tree, or a split on a feature the data does not have, crashes the process (SIGSEGV/SIGABRT) at
load or prediction. :func:`check_booster` parses the bytes with the bounded reader of
:mod:`dinosaw_deploy.segment.ubjson` and verifies what the segmenter relies on (XGBoost's model
schema, "Introduction to Model IO"): a ``gbtree`` booster with a ``multi:softprob`` objective over
``num_class`` classes and ``num_feature`` channels; per tree, arrays of ``num_nodes`` entries of the
types XGBoost writes, every child index -1 or inside the tree, left/right leaf-ness agreeing, every
node reached from the root at most once (a tree, no cycles), every split feature < ``num_feature``,
no categorical splits; ``tree_info`` and ``iteration_indptr`` consistent with the trees.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.segment.ubjson import TypedArray, UbjsonError, loads

MAX_CLASSIFIER_BYTES = 512 << 20
# per-node arrays and the UBJSON element type XGBoost writes them with
NODE_ARRAYS = {"left_children": b"l", "right_children": b"l", "parents": b"l", "split_indices": b"l",
               "split_conditions": b"d", "default_left": b"U", "base_weights": b"d", "loss_changes": b"d",
               "sum_hessian": b"d"}
ROOT_PARENT = 2147483647


def check_booster(raw: bytes, *, num_class: int, num_feature: int, source: str = "classifier") -> None:
    """Raise :class:`DinosawError` unless ``raw`` is a well-formed XGBoost multi-class tree model
    over ``num_feature`` channels and ``num_class`` classes."""
    if not raw:
        raise DinosawError(f"{source}: empty classifier")
    if len(raw) > MAX_CLASSIFIER_BYTES:
        raise DinosawError(f"{source}: classifier of {len(raw)} bytes exceeds the {MAX_CLASSIFIER_BYTES >> 20} MiB cap")
    try:
        model = loads(raw)
    except UbjsonError as exc:
        raise DinosawError(f"{source}: not an XGBoost UBJSON model ({exc})") from None
    try:
        _check_model(model, num_class, num_feature)
    except _Invalid as exc:
        raise DinosawError(f"{source}: invalid XGBoost model: {exc}") from None


class _Invalid(Exception):
    pass


def _get(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise _Invalid(f"{where}.{key} is missing")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise _Invalid(f"{where}.{key} has the wrong type ({type(value).__name__})")
    return value


def _int_str(obj: Any, key: str, where: str) -> int:
    """XGBoost stores integer parameters as decimal strings."""
    text = _get(obj, key, str, where)
    if not text.isdigit() or len(text) > 12:
        raise _Invalid(f"{where}.{key} is not a non-negative integer ({text[:20]!r})")
    return int(text)


def _check_model(model: Any, num_class: int, num_feature: int) -> None:
    learner = _get(model, "learner", dict, "model")
    params = _get(learner, "learner_model_param", dict, "learner")
    if _int_str(params, "num_class", "learner_model_param") != num_class:
        raise _Invalid(f"num_class is {params['num_class']}, the bundle has {num_class} classes")
    if _int_str(params, "num_feature", "learner_model_param") != num_feature:
        raise _Invalid(f"num_feature is {params['num_feature']}, the bundle has {num_feature} channels")
    if _int_str(params, "num_target", "learner_model_param") not in (0, 1):
        raise _Invalid("multi-target models are not supported")
    objective = _get(learner, "objective", dict, "learner")
    if _get(objective, "name", str, "objective") != "multi:softprob":
        raise _Invalid(f"objective {objective['name']!r} is not multi:softprob")
    booster = _get(learner, "gradient_booster", dict, "learner")
    if _get(booster, "name", str, "gradient_booster") != "gbtree":
        raise _Invalid(f"booster {booster['name']!r} is not gbtree")
    body = _get(booster, "model", dict, "gradient_booster")
    trees = _get(body, "trees", list, "model")
    tree_param = _get(body, "gbtree_model_param", dict, "model")
    if _int_str(tree_param, "num_trees", "gbtree_model_param") != len(trees):
        raise _Invalid(f"num_trees is {tree_param['num_trees']} but {len(trees)} trees are stored")
    info = _get(body, "tree_info", (list, TypedArray), "model")
    if len(info) != len(trees) or not all(_is_int(c) and 0 <= c < num_class for c in info):
        raise _Invalid(f"tree_info must give a class 0..{num_class - 1} for each of the {len(trees)} trees")
    if "iteration_indptr" in body:
        indptr = np.asarray(_get(body, "iteration_indptr", (list, TypedArray), "model"))
        if (indptr.ndim != 1 or len(indptr) < 1 or not np.issubdtype(indptr.dtype, np.integer) or indptr[0] != 0
                or indptr[-1] != len(trees) or np.any(np.diff(indptr) < 0)):
            raise _Invalid("iteration_indptr does not partition the trees")
    for number, tree in enumerate(trees):
        _check_tree(tree, num_feature, f"trees[{number}]")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_tree(tree: Any, num_feature: int, where: str) -> None:
    param = _get(tree, "tree_param", dict, where)
    n = _int_str(param, "num_nodes", f"{where}.tree_param")
    if n < 1:
        raise _Invalid(f"{where} has no nodes")
    if _int_str(param, "num_feature", f"{where}.tree_param") != num_feature:
        raise _Invalid(f"{where}.tree_param.num_feature is {param['num_feature']}, expected {num_feature}")
    if _int_str(param, "size_leaf_vector", f"{where}.tree_param") > 1:
        raise _Invalid(f"{where} has vector leaves (multi-target trees are not supported)")
    arrays = {}
    for key, marker in NODE_ARRAYS.items():
        array = _get(tree, key, TypedArray, where)
        if array.marker != marker or len(array) != n:
            raise _Invalid(f"{where}.{key} must hold {n} values of UBJSON type {marker.decode()}")
        arrays[key] = array
    split_type = _get(tree, "split_type", TypedArray, where)
    if len(split_type) != n or np.any(split_type != 0):
        raise _Invalid(f"{where}: categorical splits are not supported")
    for key in ("categories", "categories_nodes", "categories_segments", "categories_sizes"):
        if key in tree and len(tree[key]):
            raise _Invalid(f"{where}: categorical splits are not supported")
    left, right = arrays["left_children"].astype(np.int64), arrays["right_children"].astype(np.int64)
    parents = arrays["parents"].astype(np.int64)
    for name, children in (("left_children", left), ("right_children", right)):
        bad = (children != -1) & ((children < 1) | (children >= n))
        if bad.any():
            node = int(np.flatnonzero(bad)[0])
            raise _Invalid(f"{where}.{name}[{node}] = {children[node]} is outside the tree (0..{n - 1})")
    if np.any((left == -1) != (right == -1)):
        raise _Invalid(f"{where}: a node has exactly one child")
    if parents[0] != ROOT_PARENT and parents[0] != -1:
        raise _Invalid(f"{where}: the root has a parent")
    seen = np.zeros(n, bool)
    split = arrays["split_indices"].astype(np.int64)
    frontier = np.zeros(1, np.int64)  # breadth-first from the root, one level at a time
    while frontier.size:
        if seen[frontier].any() or np.unique(frontier).size != frontier.size:
            raise _Invalid(f"{where}: a node is reached twice (not a tree)")
        seen[frontier] = True
        inner = frontier[left[frontier] != -1]
        bad = inner[(split[inner] < 0) | (split[inner] >= num_feature)]
        if bad.size:
            node = int(bad[0])
            raise _Invalid(f"{where}.split_indices[{node}] = {split[node]} is not a feature index (0..{num_feature - 1})")
        children = np.concatenate([left[inner], right[inner]])
        if np.any(parents[children] != np.concatenate([inner, inner])):
            raise _Invalid(f"{where}: parents do not match children")
        frontier = children
    if not np.all(np.isfinite(arrays["split_conditions"][seen])) or not np.all(np.isfinite(arrays["base_weights"][seen])):
        raise _Invalid(f"{where}: non-finite split condition or leaf value")
