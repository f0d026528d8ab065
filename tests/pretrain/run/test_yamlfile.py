"""Every YAML file is read one way: a malformed one, or one giving a key twice, is one line naming
the file, the line and column, and the cause."""

import pytest

from pretrain.run import yamlfile
from pretrain.run.errors import UserError


@pytest.mark.parametrize("text, message", [
    ("moco:\n\tK: 512\n", "f.yaml: not valid YAML (line 2, column 1: found character '\\t' that cannot start any token)"),
    ("moco:\n  K: 512\nmoco:\n  m: 0.9\n", "f.yaml: not valid YAML (line 3, column 1: key 'moco' is given twice (first on line 1))"),
    ("moco:\n  K: 512\n  K: 1024\n", "f.yaml: not valid YAML (line 3, column 3: key 'K' is given twice (first on line 2))"),
    ("{a: 1, a: 2}\n", "f.yaml: not valid YAML (line 1, column 8: key 'a' is given twice (first on line 1))"),
    ("axes: [1, 2\n", "f.yaml: not valid YAML (line 2, column 1: expected ',' or ']', but got '<stream end>')"),
])
def test_a_malformed_file_is_one_line_saying_where_and_why(text, message):
    with pytest.raises(UserError) as e:
        yamlfile.parse(text, "f.yaml")
    assert str(e.value) == message


def test_well_formed_yaml_reads_as_safe_load_reads_it():
    assert yamlfile.parse("base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  x: 3\nn: 5e-4\nl: [a, a]\n", "f") == \
        {"base": {"x": 1, "y": 2}, "c": {"x": 3, "y": 2}, "n": "5e-4", "l": ["a", "a"]}
    assert yamlfile.parse("", "f") is None


def test_a_file_that_cannot_be_read_is_one_line(tmp_path):
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UserError, match=r"^profile x: cannot be read \(UnicodeDecodeError"):
        yamlfile.read(tmp_path / "bin.yaml", "profile x")
