"""The servers batch module on real libvirt: a lab host of its own (tests/lab), so a prune without any selector can
run and prove it never touches a domain this collection did not create.

The host holds an unmanaged domain running the halt image; the batch creates, changes, prunes and deletes servers
in four steps each (check mode compared with the real run server by server); the unmanaged domain must come out
exactly as it went in, still running.
"""
import os
import subprocess
import xml.etree.ElementTree as ET

import pytest

from tests.integration.conftest import import_image, run_playbook
from tests.lab.conftest import running_lab
from tests.lab.lab import HostSpec

PREFIX = "vf-t7-"
HALT = PREFIX + "halt"
FOREIGN = PREFIX + "foreign"


@pytest.fixture(scope="module")
def lab():
    with running_lab([HostSpec(PREFIX + "batch")], "servers-batch") as lab:
        yield lab


@pytest.fixture(scope="module")
def host(lab):
    from ansible_collections.virtfleet.compute.plugins.module_utils._libvirt_client import LibvirtClient

    uri = lab.uri(PREFIX + "batch")
    client = LibvirtClient(uri)
    import_image(client, HALT, lab.halt_image, "qcow2")
    yield uri, client
    client.close()


def _foreign_domain(lab, client):
    """A running domain without our metadata, booting its own copy-on-write disk of the halt image."""
    disk = os.path.join(lab.dir, FOREIGN + ".qcow2")
    subprocess.check_call(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", lab.halt_image, disk])
    root = ET.fromstring("<domain type='qemu'><name>%s</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>"
                         "<os><type arch='x86_64'>hvm</type></os><devices><disk type='file' device='disk'>"
                         "<driver name='qemu' type='qcow2'/><target dev='vda' bus='virtio'/></disk></devices>"
                         "</domain>" % FOREIGN)
    ET.SubElement(root.find("devices/disk"), "source", {"file": disk})
    dom = client.define_domain(ET.tostring(root, encoding="unicode"))
    client.start_domain(dom)
    return dom


def test_batch_create_change_prune_delete_in_four_steps(lab, host):
    uri, client = host
    dom = _foreign_domain(lab, client)
    try:
        before = client.domain_xml(dom, inactive=True)
        run = run_playbook("tests/integration/targets/servers/main.yml", lab_uri=uri, halt_image=HALT,
                           unmanaged_domain=FOREIGN)
        run.assert_ok()
        assert run.stats["localhost"]["failed"] == 0
        # The unmanaged domain went through a prune with no selector at all, untouched and still running.
        assert client.domain_xml(dom, inactive=True) == before
        assert client.domain_state(dom) == "running"
        names = sorted(d.name() for d in client.list_domains())
        assert names == [FOREIGN]
    finally:
        client.destroy_domain(dom)
        client.undefine_domain(dom)


def test_a_prune_never_deletes_unmanaged_domains_even_named_like_ours(lab, host):
    """Check mode and the real run agree, server by server, and both leave a same-named unmanaged domain alone."""
    from ansible_collections.virtfleet.compute.plugins.module_utils._server_batch import converge_servers

    uri, client = host
    dom = _foreign_domain(lab, client)
    flavor = {"vcpus": 1, "ram_mb": 64, "disk_gb": 1}
    servers = [{"name": PREFIX + "p%d" % i, "flavor": flavor, "image": HALT, "virt_type": "qemu", "tags": ["a"]}
               for i in range(3)]
    try:
        made = converge_servers(client, {"servers": servers})
        assert made["summary"]["created"] == [s["name"] for s in servers]
        check = converge_servers(client, {"servers": servers[:1], "prune": True}, check_mode=True)
        real = converge_servers(client, {"servers": servers[:1], "prune": True})
        assert [(i["name"], i["result"], i["actions"]) for i in check["results"]] == \
            [(i["name"], i["result"], i["actions"]) for i in real["results"]]
        assert check["pruned"] == real["pruned"] == [PREFIX + "p1", PREFIX + "p2"]
        assert real["unmanaged"] == [FOREIGN]
        assert client.domain_state(dom) == "running"
    finally:
        converge_servers(client, {"servers": [{"name": s["name"], "state": "absent"} for s in servers]})
        client.destroy_domain(dom)
        client.undefine_domain(dom)
    assert [d.name() for d in client.list_domains()] == []
