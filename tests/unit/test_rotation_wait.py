"""A reload is done in place only when no other replica can serve: a replica listed HEALTHY
whose health Envoy has not confirmed yet (or whose admin did not answer) is waited for, not
taken for gone (``client.mesh.rotation.Rotation._others_serving``). Envoy's admin stood in by
a fake; the rotation's file is real."""

from __future__ import annotations

from client.mesh.rotation import HEALTHY, Rotation

A, B = "127.0.0.1:1001", "127.0.0.1:1002"


class Flaky(Rotation):
    """Envoy's admin fails ``failures`` times, then sees every listed replica healthy."""

    failures = 0

    def hosts(self):
        if self.failures:
            self.failures -= 1
            raise OSError("admin busy")
        return {a: {"health_flags": "healthy"} for a in self.statuses()}


def _rotation(tmp_path, failures: int) -> Flaky:
    rotation = Flaky(tmp_path / "eds.yaml", "http://127.0.0.1:1", log=lambda _m: None)
    rotation.set(A, HEALTHY)
    rotation.set(B, HEALTHY)
    rotation.failures = failures
    return rotation


def test_an_admin_that_did_not_answer_is_waited_for(tmp_path) -> None:
    rotation = _rotation(tmp_path, failures=3)
    assert rotation._others_serving(A, timeout_s=5) == {B}


def test_with_no_answer_at_all_the_reload_is_in_place_after_the_wait(tmp_path) -> None:
    rotation = _rotation(tmp_path, failures=10**6)
    assert rotation._others_serving(A, timeout_s=0.3) == set()


def test_alone_in_the_file_it_does_not_wait(tmp_path) -> None:
    rotation = Flaky(tmp_path / "eds.yaml", "http://127.0.0.1:1", log=lambda _m: None)
    rotation.set(A, HEALTHY)
    rotation.failures = 10**6
    assert rotation._others_serving(A, timeout_s=60) == set()
