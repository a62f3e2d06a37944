"""Tests of cdkd.joints: the one skeleton record per dataset and the flip permutation."""

from __future__ import annotations

import pytest

from cdkd.joints import COCO_META, JOINTS_META, MPII_META, flip_permutation, meta_for

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("meta", [COCO_META, MPII_META], ids=["coco", "mpii"])
def test_flip_permutation_swaps_each_pair_and_is_its_own_inverse(meta):
    perm = flip_permutation(meta.flip_pairs, meta.num_joints)
    for a, b in meta.flip_pairs:
        assert (perm[a], perm[b]) == (b, a)
    assert [perm[p] for p in perm] == list(range(meta.num_joints))
    paired = {i for pair in meta.flip_pairs for i in pair}
    assert all(perm[j] == j for j in range(meta.num_joints) if j not in paired)


def test_meta_for_by_name_and_by_joint_count():
    assert meta_for("COCO") is COCO_META and meta_for("mpii", 16) is MPII_META
    assert meta_for(num_joints=17) is COCO_META and meta_for(num_joints=16) is MPII_META
    assert meta_for("mpii", 17) is None and meta_for(num_joints=5) is None and meta_for("crowdpose") is None
    assert set(JOINTS_META) == {"coco", "mpii"}
