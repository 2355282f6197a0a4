"""The servers batch (converge_servers) on a private libvirt test driver per test.

The test driver's node file has a running domain called ``test`` without our metadata: it stands for every domain
this collection did not create, and must come out of every batch and every prune exactly as it went in.
"""
import pytest

from ansible_collections.virtfleet.compute.plugins.module_utils._domain import canonical
from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ValidationError
from ansible_collections.virtfleet.compute.plugins.module_utils._server_batch import (
    Selector,
    converge_servers,
    validate_items,
)

FLAVOR = {"vcpus": 1, "ram_mb": 256, "disk_gb": 1}
UNMANAGED = "test"


def server(name, **options):
    out = dict(name=name, flavor=dict(FLAVOR), image="base.qcow2", shutdown_timeout=2)
    out.update(options)
    return out


def batch(client, servers, check=False, diff=False, **options):
    return converge_servers(client, dict(options, servers=servers), check_mode=check, diff_mode=diff)


def snapshot(client):
    return dict((dom.name(), (canonical(client.domain_xml(dom)), client.domain_state(dom)))
                for dom in client.list_domains())


def outcomes(result):
    return [(item["name"], item["result"], item["actions"]) for item in result["results"]]


def check_then_apply(client, servers, **options):
    """Check mode (changes nothing), then the real run, which must do exactly what check mode said, item by item."""
    before = snapshot(client)
    check = batch(client, servers, check=True, diff=True, **options)
    assert snapshot(client) == before, "check mode changed the host"
    real = batch(client, servers, diff=True, **options)
    assert outcomes(check) == outcomes(real)
    assert check["pruned"] == real["pruned"]
    assert check["changed"] == real["changed"]
    assert [d["after"] for d in check["diff"]] == [d["after"] for d in real["diff"]]
    return real


@pytest.fixture
def unmanaged(client):
    dom = client.lookup_domain(UNMANAGED)
    assert dom is not None and client.domain_state(dom) == "running"
    return lambda: (canonical(client.domain_xml(dom)), client.domain_state(dom))


def test_a_batch_in_four_steps(client, base_image, unmanaged):
    foreign = unmanaged()
    servers = [server("web-1", tags=["web"]), server("web-2", state="stopped"),
               server("web-3", state="present", networks=["default"])]
    created = check_then_apply(client, servers)
    assert [i["result"] for i in created["results"]] == ["created"] * 3
    assert created["summary"]["created"] == ["web-1", "web-2", "web-3"]
    assert [i["server"]["state"] for i in created["results"]] == ["running", "stopped", "stopped"]
    assert created["results"][0]["server"]["hypervisor"]
    assert created["unmanaged"] == [UNMANAGED]
    assert len(created["diff"]) == 3 and created["diff"][0]["before"] == {}

    again = check_then_apply(client, servers)
    assert not again["changed"]
    assert [i["result"] for i in again["results"]] == ["unchanged"] * 3
    assert again["diff"] == []

    servers[0]["flavor"]["ram_mb"] = 512
    servers[1]["tags"] = ["batch"]
    changed = check_then_apply(client, servers)
    assert [i["result"] for i in changed["results"]] == ["changed", "changed", "unchanged"]
    assert changed["results"][0]["server"]["flavor"]["ram_mb"] == 512
    assert not check_then_apply(client, servers)["changed"]

    deleted = check_then_apply(client, [dict(s, state="absent") for s in servers])
    assert deleted["summary"]["deleted"] == ["web-1", "web-2", "web-3"]
    assert [d.name() for d in client.list_domains()] == [UNMANAGED]
    assert unmanaged() == foreign


def test_a_network_named_alone_is_a_network(client, base_image):
    result = batch(client, [server("n-1", networks=["default"])])
    assert result["results"][0]["server"]["networks"][0]["network"] == "default"


def test_one_failing_server_does_not_stop_the_others(client, base_image):
    result = batch(client, [server("ok-1"), server("bad-1", image="no-such-image"), server("ok-2")])
    assert [(i["name"], i["result"]) for i in result["results"]] == [
        ("ok-1", "created"), ("bad-1", "failed"), ("ok-2", "created")]
    assert result["failed"] and result["changed"]
    assert result["msg"].startswith("1 of 3 servers failed: bad-1: image no-such-image not found")
    assert result["results"][1]["field"] == "image"
    assert result["summary"]["failed"] == ["bad-1"]
    assert client.lookup_domain("bad-1") is None


def test_stop_on_error_skips_the_rest(client, base_image):
    result = batch(client, [server("ok-1"), server("bad-1", image="nope"), server("ok-2")], stop_on_error=True)
    assert [i["result"] for i in result["results"]] == ["created", "failed", "skipped"]
    assert client.lookup_domain("ok-2") is None


def test_bad_items_fail_before_anything_changes(client, base_image, unmanaged):
    before = snapshot(client)
    servers = [server("ok-1"), server("bad_name!"), server("ok-2", flavour="m1"), "web-3", server("ok-1"),
               server("ok-4", flavor={"vcpus": 1, "ram_mb": 8, "disk_gb": 1}),
               server("ok-5", networks=[{"network": "default", "bridge": "br0"}])]
    with pytest.raises(ValidationError) as failed:
        batch(client, servers)
    errors = failed.value.details["errors"]
    assert [e.split(":")[0] for e in errors] == [
        "servers[1].name", "servers[2]", "servers[3]", "servers[4].name", "servers[5].flavor.ram_mb", "servers[6]"]
    assert "flavour" in errors[1]
    assert "nothing was changed" in str(failed.value)
    assert snapshot(client) == before


def test_prune_deletes_only_managed_servers_declared_nowhere(client, base_image, unmanaged):
    foreign = unmanaged()
    batch(client, [server("keep-1"), server("elsewhere-1"), server("gone-1"), server("gone-2", state="stopped")])
    result = check_then_apply(client, [server("keep-1")], prune=True, declared_names=["keep-1", "elsewhere-1"])
    assert result["pruned"] == ["gone-1", "gone-2"]
    assert [(i["name"], i["result"], i["pruned"]) for i in result["results"]] == [
        ("gone-1", "deleted", True), ("gone-2", "deleted", True), ("keep-1", "unchanged", False)]
    assert result["misplaced"] == ["elsewhere-1"]
    assert result["unmanaged"] == [UNMANAGED]
    assert sorted(d.name() for d in client.list_domains()) == ["elsewhere-1", "keep-1", UNMANAGED]
    assert unmanaged() == foreign
    # Nothing left to prune.
    assert not check_then_apply(client, [server("keep-1")], prune=True, declared_names=["elsewhere-1"])["changed"]


def test_without_prune_undeclared_servers_are_only_reported(client, base_image):
    batch(client, [server("a-1"), server("b-1")])
    result = batch(client, [server("a-1")])
    assert result["undeclared"] == ["b-1"] and result["pruned"] == []
    assert client.lookup_domain("b-1") is not None


def test_prune_selector_limits_the_prune(client, base_image, unmanaged):
    foreign = unmanaged()
    batch(client, [server("a-1", tags=["team-a"]), server("a-2", tags=["team-a", "db"], metadata={"tier": 1}),
                   server("b-1", tags=["team-b"])])
    by_tag = batch(client, [], prune=True, prune_selector={"tags": ["team-a", "db"]}, check=True)
    assert by_tag["pruned"] == ["a-2"]
    by_metadata = batch(client, [], prune=True, prune_selector={"metadata": {"tier": "1"}}, check=True)
    assert by_metadata["pruned"] == ["a-2"]
    result = check_then_apply(client, [], prune=True, prune_selector={"tags": ["team-a"]})
    assert result["pruned"] == ["a-1", "a-2"]
    assert result["undeclared"] == ["a-1", "a-2", "b-1"]
    assert sorted(d.name() for d in client.list_domains()) == ["b-1", UNMANAGED]
    assert unmanaged() == foreign


def test_prune_max_refuses_before_deleting_anything(client, base_image):
    batch(client, [server("x-1"), server("x-2"), server("x-3")])
    before = snapshot(client)
    with pytest.raises(ValidationError) as refused:
        batch(client, [server("x-1")], prune=True, prune_max=1)
    assert refused.value.field == "prune_max"
    assert refused.value.details["prune"] == ["x-2", "x-3"]
    assert snapshot(client) == before
    assert batch(client, [server("x-1")], prune=True, prune_max=2)["pruned"] == ["x-2", "x-3"]


def test_prune_with_nothing_declared_is_refused(client, base_image):
    batch(client, [server("y-1")])
    with pytest.raises(ValidationError) as refused:
        batch(client, [], prune=True)
    assert "would delete every managed server" in str(refused.value)
    # Declared elsewhere, or narrowed by a selector, an empty list is fine.
    assert batch(client, [], prune=True, declared_names=["y-1"], check=True)["misplaced"] == ["y-1"]
    assert batch(client, [], prune=True, prune_selector={"tags": ["none"]}, check=True)["pruned"] == []


def test_declared_entries_pass_unchanged(client, base_image):
    declared = server("p-1", host="compute-1", server_group="web", availability_zone="nova",
                      hints={"different_host": ["p-2"]}, networks=["default"])
    params, errors = validate_items([declared])
    assert errors == []
    assert params[0]["networks"] == [{"network": "default", "bridge": None, "mac": None, "model": "virtio",
                                      "fixed_ip": None}]
    assert batch(client, [declared])["results"][0]["result"] == "created"


@pytest.mark.parametrize("spec, tags, metadata, matches", [
    ({}, [], {}, True),
    ({"tags": ["a"]}, ["a", "b"], {}, True),
    ({"tags": ["a", "c"]}, ["a", "b"], {}, False),
    ({"metadata": {"x": True}}, [], {"x": "true"}, True),
    ({"metadata": {"x": 1}}, [], {"x": "2"}, False),
])
def test_selector(spec, tags, metadata, matches):
    class Record:
        pass

    record = Record()
    record.tags, record.metadata = tags, metadata
    assert Selector(spec).matches(record) is matches


def test_inline_server_groups_and_unset_placement_pass(client, base_image):
    # site.yml fills the placement fields in with null; inline groups are dicts.
    params, errors = validate_items([server("g-1", host=None, server_group={"name": "web", "policy": "affinity"}),
                                     server("g-2", host=None, server_group=None)])
    assert errors == []
    assert params[0]["server_group"] == {"name": "web", "policy": "affinity"}
