"""engine/names.py, the names format every tool reads: merging clusters of one name, the file beside
the checkpoint, a names file made for another checkpoint, and each bad names file as one NamesError
naming the file and the entry."""

import logging

import pytest

from engine.names import (
    NamesError,
    default_names,
    file_sha256,
    names_file_beside,
    read_names,
    resolve_names,
    write_names,
)
from utils.errors import EXIT_BAD_INPUT

NUM_CLUSTERS = 4


def names_text(entries, sha256=None):
    header = f"checkpoint: model.pth\nsha256: {sha256}\n" if sha256 else ""
    return header + "clusters:\n" + "".join(f"  - {entry}\n" for entry in entries)


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "run" / "last_model.pth"
    path.parent.mkdir()
    path.write_bytes(b"stands for a checkpoint: only its bytes' sha256 is read")
    return path


def test_clusters_of_one_name_are_one_class_in_the_lowest_ids_colour(tmp_path):
    path = tmp_path / "names.yaml"
    path.write_text(
        names_text(
            [
                "{id: 0, name: sky, colour: '#87ceeb', share: 0.25}",
                "{id: 1, name: ground, colour: '#8b4513'}",
                "{id: 2, name: sky, colour: '#0000ff'}",
                "{id: 3, name: 'cars, bikes: wheels'}",
            ]
        )
    )
    names = read_names(path, NUM_CLUSTERS)
    classes = names.classes()
    assert [(name, ids) for name, _, ids in classes] == [("sky", [0, 2]), ("ground", [1]), ("cars, bikes: wheels", [3])]
    assert names.class_of_cluster().tolist() == [0, 1, 0, 2]
    merged = names.merged_colours()
    assert merged[0].tolist() == merged[2].tolist() == [0x87, 0xCE, 0xEB]
    assert merged[3].tolist() == default_names(NUM_CLUSTERS).colours[3].tolist()  # no colour: the default palette
    assert names.shares == [0.25, None, None, None] and not names.is_default()
    # Written and read back, it is the same.
    write_names(tmp_path / "again.yaml", names)
    again = read_names(tmp_path / "again.yaml", NUM_CLUSTERS)
    assert again.names == names.names and (again.colours == names.colours).all() and again.shares == names.shares


def test_default_names_round_trip(tmp_path):
    names = default_names(NUM_CLUSTERS, shares=[0.5, 0.25, 0.25, 0.0], checkpoint="runs/x/last_model.pth", sha256="ab")
    write_names(tmp_path / "clusters.yaml", names)
    again = read_names(tmp_path / "clusters.yaml", NUM_CLUSTERS)
    assert again.is_default() and again.names[3] == "cluster 3" and again.checkpoint == "last_model.pth"
    assert again.shares == [0.5, 0.25, 0.25, 0.0] and again.sha256 == "ab"
    assert len({tuple(colour) for colour in again.colours.tolist()}) == NUM_CLUSTERS
    assert not (again.colours == 0).all(axis=1).any()  # no cluster black, the colour of ignored pixels


def test_the_file_beside_the_checkpoint_is_found(checkpoint, tmp_path):
    assert names_file_beside(checkpoint) == checkpoint.parent / "last_model.clusters.yaml"
    assert resolve_names(checkpoint, NUM_CLUSTERS) is None  # none beside it: the caller's default
    names_file_beside(checkpoint).write_text(
        names_text([f"{{id: {k}, name: beside {k}}}" for k in range(NUM_CLUSTERS)], file_sha256(checkpoint))
    )
    assert resolve_names(checkpoint, NUM_CLUSTERS).names[0] == "beside 0"
    given = tmp_path / "given.yaml"  # --names wins over the file beside the checkpoint
    given.write_text(names_text([f"{{id: {k}, name: given {k}}}" for k in range(NUM_CLUSTERS)]))
    assert resolve_names(checkpoint, NUM_CLUSTERS, given).names[0] == "given 0"


def test_names_made_for_another_checkpoint(checkpoint, tmp_path, caplog):
    path = tmp_path / "other.yaml"
    path.write_text(names_text([f"{{id: {k}, name: n{k}}}" for k in range(NUM_CLUSTERS)], "f" * 64))
    logger = logging.getLogger("test_names")
    with caplog.at_level(logging.WARNING, logger="test_names"):
        names = resolve_names(checkpoint, NUM_CLUSTERS, path, logger=logger)
    assert names.names[1] == "n1"
    (warning,) = caplog.messages
    assert str(path) in warning and str(checkpoint) in warning and "another checkpoint" in warning
    with pytest.raises(NamesError, match="--strict-names") as refused:
        resolve_names(checkpoint, NUM_CLUSTERS, path, strict=True)
    assert str(path) in str(refused.value) and str(checkpoint) in str(refused.value)
    caplog.clear()
    path.write_text(names_text([f"{{id: {k}, name: n{k}}}" for k in range(NUM_CLUSTERS)], file_sha256(checkpoint)))
    with caplog.at_level(logging.WARNING, logger="test_names"):
        resolve_names(checkpoint, NUM_CLUSTERS, path, strict=True, logger=logger)
    assert not caplog.messages


GOOD = [f"{{id: {k}, name: n{k}}}" for k in range(NUM_CLUSTERS)]
BAD_FILES = {
    "unknown-id": (names_text([*GOOD, "{id: 7, name: extra}"]), "clusters entry 5: id 7 is not a cluster"),
    "missing-id": (names_text(GOOD[:2] + GOOD[3:]), "cluster id(s) [2] missing"),
    "repeated-id": (names_text([*GOOD, GOOD[0]]), "clusters entry 5: id 0 is given twice"),
    "bad-colour": (names_text([*GOOD[:3], "{id: 3, name: n3, colour: '#12345'}"]), "entry 4: id 3: colour '#12345'"),
    "colour-name": (names_text([*GOOD[:3], "{id: 3, name: n3, colour: red}"]), "colour 'red': expected #rrggbb"),
    "share-above-one": (names_text([*GOOD[:3], "{id: 3, name: n3, share: 1.5}"]), "share 1.5: expected a fraction"),
    "empty-name": (names_text([*GOOD[:3], "{id: 3, name: ' '}"]), "id 3: name ' ': expected a non-empty text"),
    "not-yaml": ("clusters: [ {id: 0, name: sky\n", "not a YAML names file"),
    "not-a-mapping": ("- just\n- a list\n", "expected 'clusters:'"),
    "binary": (b"\xff\xfe\x00 not text", "not a YAML names file"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_each_bad_names_file_is_one_error_naming_it(case, tmp_path):
    content, expected = BAD_FILES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(NamesError) as refused:
        read_names(path, NUM_CLUSTERS)
    message = str(refused.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message
    assert refused.value.exit_code == EXIT_BAD_INPUT


def test_a_python_tag_builds_nothing(tmp_path):
    """A names file comes from anyone: a tag that would build an object or call a function is
    refused as not a names file, and nothing runs."""
    marker = tmp_path / "ran"
    path = tmp_path / "names.yaml"
    path.write_text(
        f"clusters: !!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib.Path ['{marker}']]\n"
    )
    with pytest.raises(NamesError, match="not a YAML names file"):
        read_names(path, NUM_CLUSTERS)
    path.write_text("clusters:\n  - !!python/object:argparse.Namespace {id: 0, name: sky}\n")
    with pytest.raises(NamesError, match="not a YAML names file"):
        read_names(path, NUM_CLUSTERS)
    assert not marker.exists()
