"""Watches against tests/k8s_standin.py, an in-process stand-in for the API server (NOT a cluster).

First the stand-in's own watch semantics, as the API conventions state them (a watch from a
list's resourceVersion, label selectors, a bounded history and 410 Expired, bookmarks,
timeoutSeconds), read through the backend's :class:`~composer_plugins.kubernetes.api.Api`; then
the backend's capability ``events`` on them: what each change is reported as, how a window
resumes, and what a 410 or a broken stream does. What is proven is what we send and how we read
the answers of a server that follows the conventions; not a real API server's timing (when it
sends bookmarks, how long it keeps its history).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from composer_core.engine.labels import LABEL_CONNECTOR, LABEL_MANAGER
from composer_core.errors import RuntimeUnavailable
from composer_core.settings import Settings
from composer_core.testing import ContractEnv, contract_workload, wait_for
from composer_core.workload import WorkloadEvent
from composer_plugins.kubernetes import connect
from composer_plugins.kubernetes.api import Api
from composer_plugins.kubernetes.backend import KubernetesBackend
from tests import k8s_standin
from tests.k8s_standin import StandIn
from tests.test_kubernetes_standin import NS, env_of

pytestmark = pytest.mark.k8s_standin

BOUND = 10.0


def deployment(name: str, labels: dict[str, str], replicas: int = 1,
               pods: dict[str, str] | None = None) -> dict[str, Any]:
    """A Deployment labelled ``labels``, its pods ``pods`` (default: the same)."""
    pods = pods or labels
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": pods},
                     "template": {"metadata": {"labels": pods},
                                  "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}


@pytest.fixture
def standin() -> Iterator[StandIn]:
    server = StandIn()
    yield server
    server.close()


@pytest.fixture
def kubeconfig(standin: StandIn, tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(standin.kubeconfig(NS)))
    return path


@pytest.fixture
def api(kubeconfig: Path) -> Iterator[Api]:
    opened = Api.connect(kubeconfig=str(kubeconfig), context=None, namespace=NS, timeout=5)
    yield opened
    opened.close()


@pytest.fixture
def backend(kubeconfig: Path, make_settings: Callable[..., Settings]
            ) -> Iterator[KubernetesBackend]:
    opened = connect(make_settings({"opencti.daemon.kubernetes.kubeconfig": str(kubeconfig),
                                    "opencti.daemon.kubernetes.rollout_timeout": 5}))
    yield opened
    opened.close()


def watched(api: Api, resource: str, labels: dict[str, str], version: str, seconds: int,
            **options: Any) -> list[tuple[str, Any]]:
    group = "apps/v1" if resource == "deployments" else ""
    return list(api.open_watch(group, resource, labels, version, seconds, **options).events())


# --- the stand-in's watches --------------------------------------------------------------------


def test_a_watch_from_a_lists_version_streams_what_changed_after_it_by_selector(
        standin: StandIn, api: Api) -> None:
    mine, other = {"team": "a"}, {"team": "b"}
    standin.create("deployments", NS, deployment("before", mine))
    _, version = api.list_from("apps/v1", "deployments", mine)
    standin.create("deployments", NS, deployment("d1", mine))
    standin.create("deployments", NS, deployment("stranger", other))
    standin.scale(NS, "d1", 0)
    # relabelled into the selector: ADDED; out of it: DELETED
    standin.create("deployments", NS, deployment("stranger", mine, pods=other))
    standin.create("deployments", NS, deployment("d1", {"team": "c"}, replicas=0, pods=mine))
    events = watched(api, "deployments", mine, version, 1)
    seen = [(kind, obj["metadata"]["name"]) for kind, obj in events]
    # d1's controller status updates are MODIFIED too; "before" was listed, not streamed
    assert seen[0] == ("ADDED", "d1") and ("ADDED", "before") not in seen
    assert ("ADDED", "stranger") in seen and seen[-1] == ("DELETED", "d1")
    scaled = [obj for kind, obj in events if kind == "MODIFIED" and obj["spec"]["replicas"] == 0]
    assert scaled and scaled[0]["metadata"]["name"] == "d1"
    versions = [int(obj["metadata"]["resourceVersion"]) for _, obj in events]
    assert versions == sorted(versions) and versions[0] > int(version)
    assert standin.watch_ends == ["timeout"]  # ended by its timeoutSeconds


def test_a_watch_without_a_version_starts_with_what_exists(standin: StandIn, api: Api) -> None:
    standin.create("deployments", NS, deployment("d1", {"team": "a"}))
    events = watched(api, "deployments", {"team": "a"}, "", 1)
    assert [(k, o["metadata"]["name"]) for k, o in events][:1] == [("ADDED", "d1")]


def test_a_version_older_than_the_bounded_history_is_410_expired(
        tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    standin = StandIn(history=5)
    path = tmp_path / "small-kubeconfig"
    path.write_text(yaml.safe_dump(standin.kubeconfig(NS)))
    small = Api.connect(kubeconfig=str(path), context=None, namespace=NS, timeout=5)
    try:
        standin.create("deployments", NS, deployment("d0", {"team": "a"}))
        _, version = small.list_from("apps/v1", "deployments", {"team": "a"})
        standin.create("deployments", NS, deployment("d1", {"team": "a"}))
        # within the history: served
        assert [k for k, _ in watched(small, "deployments", {"team": "a"}, version, 1)][0] \
            == "ADDED"
        for n in range(2, 5):  # each create is two changes: the write and its status update
            standin.create("deployments", NS, deployment(f"d{n}", {"team": "b"}))
        ((kind, status),) = watched(small, "deployments", {"team": "a"}, version, 5)
        assert kind == "ERROR" and (status["code"], status["reason"]) == (410, "Expired")
        assert status["kind"] == "Status" and "too old resource version" in status["message"]
        assert standin.watch_ends[-1] == "expired" and len(standin.history) == 5
    finally:
        small.close()
        standin.close()


def test_compaction_expires_a_version_and_bookmarks_carry_the_latest(standin: StandIn,
                                                                     api: Api) -> None:
    _, version = api.list_from("apps/v1", "deployments", {"team": "a"})
    standin.create("deployments", NS, deployment("other", {"team": "b"}))  # not ours
    standin.bookmark_seconds = 0.2
    events = watched(api, "deployments", {"team": "a"}, version, 1, bookmarks=True)
    assert events and {kind for kind, _ in events} == {"BOOKMARK"}
    (last_kind, last) = events[-1]  # one right before the timeout, at the newest version
    latest = int(last["metadata"]["resourceVersion"])
    assert latest > int(version) and last == {"kind": "Deployment", "apiVersion": "apps/v1",
                                              "metadata": {"resourceVersion": str(latest)}}
    standin.compact()
    # from the bookmark's version: nothing is lost, nothing expires...
    assert [k for k, _ in watched(api, "deployments", {"team": "a"}, str(latest), 1)] == []
    # ...while the list's version, before the compaction, has expired
    (kind, status), = watched(api, "deployments", {"team": "a"}, version, 1)
    assert (kind, status["code"]) == ("ERROR", 410)


def test_end_watches_ends_them_cleanly_or_cuts_them(standin: StandIn, api: Api) -> None:
    _, version = api.list_from("", "pods", {})
    for clean in (True, False):
        stream = api.open_watch("", "pods", {}, version, 60)
        wait_for(lambda: standin.watching == 1, BOUND, "the watch open")
        standin.end_watches(clean=clean)
        if clean:
            assert list(stream.events()) == []
        else:
            with pytest.raises(RuntimeUnavailable) as caught:
                list(stream.events())
            assert "the watch of pods" in caught.value.message
    assert standin.watch_ends == ["ended", "cut"]


def test_a_watch_closed_before_or_while_it_is_read_lets_its_connection_go(
        standin: StandIn, api: Api) -> None:
    """Closed before anyone reads it (a window closed while its watch opened): the connection is
    closed there and then, not left half shut until the garbage collector finds it."""
    _, version = api.list_from("", "pods", {})
    unread = api.open_watch("", "pods", {}, version, 60)
    wait_for(lambda: standin.watching == 1, BOUND, "the watch open")
    unread.close()
    wait_for(lambda: standin.watching == 0, BOUND, "the server saw the unread watch go")
    assert list(unread.events()) == []  # and reading it afterwards finds it ended
    read = api.open_watch("", "pods", {}, version, 60)
    reader = threading.Thread(target=lambda: list(read.events()), daemon=True)
    reader.start()
    wait_for(lambda: standin.watching == 1, BOUND, "the second watch open")
    read.close()
    reader.join(BOUND)
    assert not reader.is_alive()
    wait_for(lambda: standin.watching == 0, BOUND, "the server saw the read watch go")
    assert standin.watch_ends == ["gone", "gone"]


def listed(standin: StandIn) -> list[k8s_standin.Request]:
    """The list requests of Deployments and Pods (not watches)."""
    return [r for r in standin.requests if r.method == "GET" and "watch" not in r.query
            and r.path.endswith(("/deployments", "/pods"))]


# --- the backend's events --------------------------------------------------------------------------


def deployed(standin: StandIn, backend: KubernetesBackend,
             name: str) -> tuple[ContractEnv, dict[str, str]]:
    """A workload of a new manager applied; the manager's env and labels."""
    env = env_of(standin)
    backend.apply(contract_workload(env, name), None)
    return env, {LABEL_MANAGER: env.manager}


class Reader:
    """A window of events read by a thread, as ``run``'s watcher reads it."""

    def __init__(self, backend: KubernetesBackend, labels: dict[str, str], since: float | None,
                 window: float) -> None:
        self.stream = backend.events(labels, since, window)
        self.seen: list[WorkloadEvent] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            self.seen.extend(self.stream)
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            self.error = exc

    def kinds(self, name: str) -> list[str]:
        return [e.kind for e in self.seen if e.name == name]

    def end(self) -> None:
        self.thread.join(BOUND)
        assert not self.thread.is_alive()

    def expect(self, standin: StandIn, change: Callable[[], Any], name: str, kind: str) -> None:
        """Once both watches are open, ``change``; then wait for the event ``kind`` of ``name``
        and close the window."""
        try:
            wait_for(lambda: standin.watching == 2, BOUND, "both watches open")
            change()
            wait_for(lambda: kind in self.kinds(name), BOUND, f"{kind} of {name}")
        finally:
            self.stream.close()
            self.end()


def test_events_say_what_happened_to_our_deployments_and_pods(standin: StandIn,
                                                              backend: KubernetesBackend) -> None:
    env = env_of(standin)
    labels = {LABEL_MANAGER: env.manager}
    backend.apply(contract_workload(env, "ev-scaled"), None)
    backend.apply(contract_workload(env, "ev-crash"), None)
    reader = Reader(backend, labels, None, 60)
    try:
        wait_for(lambda: standin.watching == 2, BOUND, "both watches open")
        backend.apply(contract_workload(env, "ev-new"), None)
        standin.scale(NS, "ev-scaled", 0)  # out of band
        (pod,) = standin.pods_of(NS, "ev-crash")
        name = pod["metadata"]["name"]
        for restarts in (1, 2):  # two deaths; the kubelet restarts it between
            standin.set_pod_status(NS, name, k8s_standin.crash_loop(restarts))
            standin.set_pod_status(NS, name, k8s_standin.running(restarts))
        standin.set_pod_status(NS, name, k8s_standin.waiting("ErrImagePull", "401"))
        standin.set_pod_status(NS, name, k8s_standin.waiting("ImagePullBackOff", "401"))
        standin.set_pod_status(NS, name, k8s_standin.waiting("ErrImagePull", "401"))
        standin.create("deployments", NS, deployment("stranger", {LABEL_CONNECTOR: "ev-new"}))
        standin.delete("deployments", NS, "stranger")
        standin.delete("deployments", NS, "ev-new")
        wait_for(lambda: "removed" in reader.kinds("ev-new") and len(reader.kinds("ev-crash"))
                 == 5 and len(reader.kinds("ev-scaled")) == 2, BOUND, "all of it streamed")
    finally:
        reader.stream.close()
        reader.end()
    assert reader.error is None
    # the two watches are two streams: their events interleave in no given order
    assert {"created", "started", "removed"} <= set(reader.kinds("ev-new"))
    # scaled to 0 (the Deployment's watch); its pod deleted (the pods')
    assert sorted(reader.kinds("ev-scaled")) == ["other", "stopped"]
    # one watch: in order
    assert reader.kinds("ev-crash") == ["died", "started", "died", "started", "failed"]
    assert [e.action for e in reader.seen if e.name == "ev-crash"][0] == "pod CrashLoopBackOff"
    assert {e.connector_id for e in reader.seen} == {"ev-new", "ev-scaled", "ev-crash"}
    assert "stranger" not in {e.name for e in reader.seen}
    uid = standin.get("deployments", NS, "ev-scaled")["metadata"]["uid"]
    assert {e.id for e in reader.seen if e.name == "ev-scaled"} == {uid}


def test_a_window_resumes_from_the_last_version_without_listing(standin: StandIn,
                                                                backend: KubernetesBackend
                                                                ) -> None:
    env, labels = deployed(standin, backend, "ev-a")
    first = Reader(backend, labels, None, 2)  # ends by itself: the watches' timeoutSeconds
    first.end()
    assert first.error is None and standin.watch_ends == ["timeout", "timeout"]
    lists = len(listed(standin))
    standin.scale(NS, "ev-a", 0)  # while no window is open
    second = Reader(backend, labels, first.stream.until, 30)
    second.expect(standin, lambda: None, "ev-a", "stopped")  # the change between windows
    assert len(listed(standin)) == lists
    watches = [r for r in standin.requests if r.query.get("watch") == "true"]
    assert {r.path for r in watches} == {f"/apis/apps/v1/namespaces/{NS}/deployments",
                                         f"/api/v1/namespaces/{NS}/pods"}
    assert all(r.query["allowWatchBookmarks"] == "true" and r.query["labelSelector"]
               == f"{LABEL_MANAGER}={env.manager}" for r in watches)
    assert int(watches[0].query["timeoutSeconds"]) == 2


def test_a_server_ending_the_watches_early_is_resumed_a_cut_is_a_break(
        standin: StandIn, backend: KubernetesBackend) -> None:
    env, labels = deployed(standin, backend, "ev-b")
    reader = Reader(backend, labels, None, 60)
    wait_for(lambda: standin.watching == 2, BOUND, "both watches open")
    standin.end_watches(clean=True)  # a graceful restart
    standin.scale(NS, "ev-b", 0)
    wait_for(lambda: "stopped" in reader.kinds("ev-b"), BOUND, "the change after the reopen")
    assert reader.thread.is_alive() and reader.error is None
    wait_for(lambda: standin.watching == 2, BOUND, "both watches open again")
    standin.end_watches(clean=False)  # the server went away
    reader.end()
    assert isinstance(reader.error, RuntimeUnavailable)
    assert "broke" in reader.error.message


def test_410_expired_is_runtime_unavailable_and_the_next_window_lists_again(
        standin: StandIn, backend: KubernetesBackend) -> None:
    env, labels = deployed(standin, backend, "ev-c")
    first = Reader(backend, labels, None, 2)
    first.end()
    standin.create("deployments", NS, deployment("other", {"team": "b"}))  # not ours
    standin.compact()  # the history no longer reaches back to where the first window was
    second = Reader(backend, labels, first.stream.until, 30)
    second.end()
    assert isinstance(second.error, RuntimeUnavailable)
    assert "410 Expired" in second.error.message and "listing again" in second.error.message
    lists = len(listed(standin))
    third = Reader(backend, labels, first.stream.until, 30)  # the same instance: a fresh list
    third.expect(standin, lambda: standin.scale(NS, "ev-c", 0), "ev-c", "stopped")
    assert len(listed(standin)) == lists + 2


def test_bookmarks_keep_a_quiet_window_resumable_past_a_compaction(
        standin: StandIn, backend: KubernetesBackend) -> None:
    """Nothing of ours changes during a window while others' objects do: the bookmark before
    the watches' timeout carries the version on, so the next window resumes, though the history
    was compacted after the window."""
    _, labels = deployed(standin, backend, "ev-q")
    first = Reader(backend, labels, None, 3)
    wait_for(lambda: standin.watching == 2, BOUND, "both watches open")
    standin.create("deployments", NS, deployment("other", {"team": "b"}))  # not ours
    first.end()
    assert first.error is None and first.seen == []
    standin.compact()
    second = Reader(backend, labels, first.stream.until, 30)
    second.expect(standin, lambda: standin.scale(NS, "ev-q", 0), "ev-q", "stopped")
    assert second.error is None and "expired" not in standin.watch_ends


def test_close_from_another_thread_ends_both_watches_at_once(standin: StandIn,
                                                             backend: KubernetesBackend) -> None:
    env = env_of(standin)
    reader = Reader(backend, {LABEL_MANAGER: env.manager}, None, 300)
    wait_for(lambda: standin.watching == 2, BOUND, "both watches open")
    closer = threading.Thread(target=reader.stream.close)
    closer.start()
    closer.join(BOUND)
    reader.end()
    assert reader.error is None
    wait_for(lambda: standin.watching == 0, BOUND, "the server saw both go")
    assert sorted(standin.watch_ends) == ["gone", "gone"]
