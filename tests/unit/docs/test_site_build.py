"""docs/site/build.py: the guides' links to repository files, and the link check of the built site."""
import importlib.util
import os

import pytest

from tests.conftest import REPO_ROOT

REPO_URL = "https://github.com/virtfleet/compute"


@pytest.fixture(scope="module")
def site_build():
    spec = importlib.util.spec_from_file_location("site_build", os.path.join(REPO_ROOT, "docs", "site", "build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_links_to_repository_files_become_repository_urls(site_build):
    text = ("[hosts](../inventory/local/hosts.yml) [guide](servers.md) [part](servers.md#rescue) "
            "[dir](../playbooks) [web](https://example.org/x) [here](#top) [gone](../no/such/file.yml)")
    out = site_build.rewrite_links(text, REPO_URL)
    assert "[hosts](%s/blob/main/inventory/local/hosts.yml)" % REPO_URL in out
    assert "[dir](%s/tree/main/playbooks)" % REPO_URL in out
    # Guides, other sites, anchors and missing files are left alone (MyST fails the build on the last).
    for kept in ("[guide](servers.md)", "[part](servers.md#rescue)", "[web](https://example.org/x)", "[here](#top)",
                 "[gone](../no/such/file.yml)"):
        assert kept in out


def _page(path, body):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write("<html><body>%s</body></html>" % body)


def test_link_check_finds_every_kind_of_broken_link(site_build, tmp_path):
    site = str(tmp_path)
    _page(os.path.join(site, "index.html"),
          '<a href="guides/a.html#intro">ok</a> <a href="guides/a.html#nowhere">bad fragment</a>'
          ' <a href="guides/missing.html">missing page</a> <img src="_static/logo.png">'
          ' <a href="%s/blob/main/galaxy.yml">repo file</a> <a href="%s/blob/main/no-such-file">bad repo file</a>'
          ' <a href="https://example.org/">elsewhere</a> <a href="mailto:x@example.org">mail</a>'
          % (REPO_URL, REPO_URL))
    _page(os.path.join(site, "guides", "a.html"), '<section id="intro"><a href="../index.html">up</a>'
          '<a href="#intro">self</a><a href="">same page</a></section>')
    figures, problems = site_build.check_links(site, REPO_URL)
    assert figures["pages"] == 2
    assert figures["repository"] == 2 and figures["external_distinct"] == ["https://example.org/"]
    assert sorted(problems) == sorted([
        "index.html: guides/a.html#nowhere: no element with id 'nowhere'",
        "index.html: guides/missing.html leads nowhere",
        "index.html: _static/logo.png leads nowhere",
        "index.html: %s/blob/main/no-such-file names nothing in the repository" % REPO_URL,
    ])


def test_link_check_of_a_sound_site_is_clean(site_build, tmp_path):
    site = str(tmp_path)
    _page(os.path.join(site, "index.html"), '<a href="b/">dir index</a><a name="top"></a><a href="#top">top</a>')
    _page(os.path.join(site, "b", "index.html"), '<a href="../index.html#top">back</a>')
    figures, problems = site_build.check_links(site, REPO_URL)
    assert problems == [] and figures["internal"] == 3
