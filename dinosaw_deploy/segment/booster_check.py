"""Structural check of an untrusted XGBoost booster before XGBoost loads it.

XGBoost trusts the node indices of a saved model: a tree whose child index points outside the
tree, or a split on a feature the data does not have, crashes the process (SIGSEGV/SIGABRT) at
load or prediction. :func:`check_booster` converts the model (XGBoost's JSON; the UBJSON of format-1
bundles through the bounded reader of :mod:`dinosaw_deploy.segment.ubjson`) to the typed records below
(XGBoost's model schema, "Introduction to Model IO"): a ``gbtree`` booster with a ``multi:softprob``
objective over ``num_class`` classes and ``num_feature`` channels; per tree, arrays of ``num_nodes`` entries
of the types XGBoost writes. It then verifies the trees: every child index -1 or inside the tree,
left/right leaf-ness agreeing, every node reached from the root at most once (a tree, no cycles), every
split feature < ``num_feature``, no categorical splits; ``tree_info`` and ``iteration_indptr`` consistent
with the trees.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
import numpy as np
from msgspec import Meta

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.schema import SchemaError, convert, decode_json
from dinosaw_deploy.segment.ubjson import UbjsonError, loads

MAX_CLASSIFIER_BYTES = 512 << 20
ROOT_PARENT = 2147483647
NODE_ARRAYS = ("left_children", "right_children", "parents", "split_indices", "split_conditions", "default_left",
               "base_weights", "loss_changes", "sum_hessian", "split_type")  # one entry per node each
Count = Annotated[str, Meta(pattern="^[0-9]{1,12}$")]  # XGBoost writes integer parameters as decimal strings


class TreeParam(msgspec.Struct, frozen=True):
    num_nodes: Count
    num_feature: Count
    size_leaf_vector: Count = "1"


class Tree(msgspec.Struct, frozen=True):
    tree_param: TreeParam
    left_children: list[int]
    right_children: list[int]
    parents: list[int]
    split_indices: list[int]
    split_conditions: list[float]
    default_left: list[Annotated[int, Meta(ge=0, le=1)]]
    base_weights: list[float]
    loss_changes: list[float]
    sum_hessian: list[float]
    split_type: list[int]
    categories: list[int] = []
    categories_nodes: list[int] = []
    categories_segments: list[int] = []
    categories_sizes: list[int] = []


class GbtreeModelParam(msgspec.Struct, frozen=True):
    num_trees: Count


class GbtreeModel(msgspec.Struct, frozen=True):
    gbtree_model_param: GbtreeModelParam
    trees: list[Tree]
    tree_info: list[int]
    iteration_indptr: list[int] | None = None


class GradientBooster(msgspec.Struct, frozen=True):
    name: Literal["gbtree"]
    model: GbtreeModel


class Objective(msgspec.Struct, frozen=True):
    name: Literal["multi:softprob"]


class LearnerModelParam(msgspec.Struct, frozen=True):
    num_class: Count
    num_feature: Count
    num_target: Count = "1"


class Learner(msgspec.Struct, frozen=True):
    learner_model_param: LearnerModelParam
    objective: Objective
    gradient_booster: GradientBooster


class BoosterModel(msgspec.Struct, frozen=True):
    """The parts of an XGBoost model file the segmenter relies on (other fields are ignored)."""

    learner: Learner


def check_booster(raw: bytes, *, num_class: int, num_feature: int, source: str = "classifier",
                  ubjson: bool = False) -> None:
    """Raise :class:`DinosawError` unless ``raw`` (XGBoost JSON; UBJSON with ``ubjson``) is a well-formed
    XGBoost multi-class tree model over ``num_feature`` channels and ``num_class`` classes."""
    if not raw:
        raise DinosawError(f"{source}: empty classifier")
    if len(raw) > MAX_CLASSIFIER_BYTES:
        raise DinosawError(f"{source}: classifier of {len(raw)} bytes exceeds the {MAX_CLASSIFIER_BYTES >> 20} MiB cap")
    if ubjson:
        try:
            model = convert(_plain(loads(raw)), BoosterModel, f"{source}: invalid XGBoost model")
        except UbjsonError as exc:
            raise DinosawError(f"{source}: not an XGBoost UBJSON model ({exc})") from None
    else:
        model = decode_json(raw, BoosterModel, f"{source}: invalid XGBoost model")
    try:
        _check_model(model, num_class, num_feature)
    except _Invalid as exc:
        raise SchemaError(f"{source}: invalid XGBoost model: {exc}") from None


def _plain(value: Any) -> Any:
    """UBJSON's typed arrays as lists, so the model converts like decoded JSON."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


class _Invalid(Exception):
    pass


def _check_model(model: BoosterModel, num_class: int, num_feature: int) -> None:
    params = model.learner.learner_model_param
    if int(params.num_class) != num_class:
        raise _Invalid(f"num_class is {params.num_class}, the bundle has {num_class} classes")
    if int(params.num_feature) != num_feature:
        raise _Invalid(f"num_feature is {params.num_feature}, the bundle has {num_feature} channels")
    if int(params.num_target) not in (0, 1):
        raise _Invalid("multi-target models are not supported")
    body = model.learner.gradient_booster.model
    trees = body.trees
    if int(body.gbtree_model_param.num_trees) != len(trees):
        raise _Invalid(f"num_trees is {body.gbtree_model_param.num_trees} but {len(trees)} trees are stored")
    if len(body.tree_info) != len(trees) or not all(0 <= c < num_class for c in body.tree_info):
        raise _Invalid(f"tree_info must give a class 0..{num_class - 1} for each of the {len(trees)} trees")
    if body.iteration_indptr is not None:
        indptr = np.asarray(body.iteration_indptr, np.int64)
        if (len(indptr) < 1 or indptr[0] != 0 or indptr[-1] != len(trees) or np.any(np.diff(indptr) < 0)):
            raise _Invalid("iteration_indptr does not partition the trees")
    for number, tree in enumerate(trees):
        _check_tree(tree, num_feature, f"trees[{number}]")


def _check_tree(tree: Tree, num_feature: int, where: str) -> None:
    n = int(tree.tree_param.num_nodes)
    if n < 1:
        raise _Invalid(f"{where} has no nodes")
    if int(tree.tree_param.num_feature) != num_feature:
        raise _Invalid(f"{where}.tree_param.num_feature is {tree.tree_param.num_feature}, expected {num_feature}")
    if int(tree.tree_param.size_leaf_vector) > 1:
        raise _Invalid(f"{where} has vector leaves (multi-target trees are not supported)")
    for key in NODE_ARRAYS:
        if len(getattr(tree, key)) != n:
            raise _Invalid(f"{where}.{key} must hold {n} values")
    if any(tree.split_type) or tree.categories or tree.categories_nodes or tree.categories_segments \
            or tree.categories_sizes:
        raise _Invalid(f"{where}: categorical splits are not supported")
    left, right = np.asarray(tree.left_children, np.int64), np.asarray(tree.right_children, np.int64)
    parents = np.asarray(tree.parents, np.int64)
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
    split = np.asarray(tree.split_indices, np.int64)
    frontier = np.zeros(1, np.int64)  # breadth-first from the root, one level at a time
    while frontier.size:
        if seen[frontier].any() or np.unique(frontier).size != frontier.size:
            raise _Invalid(f"{where}: a node is reached twice (not a tree)")
        seen[frontier] = True
        inner = frontier[left[frontier] != -1]
        bad = inner[(split[inner] < 0) | (split[inner] >= num_feature)]
        if bad.size:
            node = int(bad[0])
            raise _Invalid(f"{where}.split_indices[{node}] = {split[node]} is not a feature index "
                           f"(0..{num_feature - 1})")
        children = np.concatenate([left[inner], right[inner]])
        if np.any(parents[children] != np.concatenate([inner, inner])):
            raise _Invalid(f"{where}: parents do not match children")
        frontier = children
    conditions, weights = np.asarray(tree.split_conditions), np.asarray(tree.base_weights)
    if not np.all(np.isfinite(conditions[seen])) or not np.all(np.isfinite(weights[seen])):
        raise _Invalid(f"{where}: non-finite split condition or leaf value")
