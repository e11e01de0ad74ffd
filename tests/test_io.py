import os
import stat

import numpy as np
import pytest

from solo_poisoncam.io import read_json, save_npy, write_json, write_text


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_get_the_mode_of_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        save_npy(tmp_path / "b.npy", np.arange(3))
    finally:
        os.umask(old)
    for name in ("a.json", "b.npy"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode
    assert read_json(tmp_path / "a.json") == {"x": 1}


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    write_text(tmp_path / "t.txt", "old")

    class Boom:
        pass
    with pytest.raises(TypeError):
        write_json(tmp_path / "t.txt", {"x": Boom()})
    assert (tmp_path / "t.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]
