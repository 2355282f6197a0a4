"""Build the documentation site and check its links: `make docs` runs this.

1. antsibull-docs renders the collection's plugin and role documentation (DOCUMENTATION, EXAMPLES, RETURN and
   meta/argument_specs.yml) as reStructuredText, exactly as the Ansible community's collection docs are made;
2. the guides of docs/*.md join them (MyST reads Markdown), their links to repository files outside docs/ rewritten
   to the repository's web address (a site has no ../inventory/ to link to);
3. Sphinx builds HTML with warnings as errors (a broken cross-reference, an unknown option, a guide missing from
   the table of contents fail the build);
4. every link of every page is checked: a relative link must reach a file of the site and, with a #fragment, an
   element with that id; a link into the repository (galaxy.yml's ``repository``) must name a file or directory
   that exists in this checkout. Other external links are listed but not fetched: these machines reach no web.

Usage: python docs/site/build.py [--dest build/docs] [--check-only]
"""
import argparse
import html.parser
import os
import re
import shutil
import subprocess
import sys
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DOCS = os.path.join(REPO, "docs")
COLLECTION = "virtfleet.compute"
BRANCH = "main"
MD_LINK = re.compile(r"(\]\()([^)\s]+)(\))")


class SiteError(Exception):
    pass


def repository_url():
    with open(os.path.join(REPO, "galaxy.yml")) as handle:
        match = re.search(r"(?m)^repository:\s*(\S+)\s*$", handle.read())
    if not match:
        raise SiteError("galaxy.yml has no repository: the site cannot link to repository files")
    return match.group(1).rstrip("/")


# ---------------------------------------------------------------------------------------------------------------------
# the guides

def guides():
    return sorted(name for name in os.listdir(DOCS) if name.endswith(".md"))


def rewrite_links(text, repo_url):
    """Links of a guide (a file of docs/) to repository files outside docs/ -> the repository's web address."""

    def replace(match):
        target = match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            return match.group(0)
        path, _sep, fragment = target.partition("#")
        resolved = os.path.normpath(os.path.join(DOCS, path))
        inside_docs = os.path.dirname(resolved) == DOCS and resolved.endswith(".md")
        if inside_docs or not os.path.exists(resolved) or not resolved.startswith(REPO + os.sep):
            # Another guide (MyST resolves it), or a missing file: MyST warns and the build fails.
            return match.group(0)
        kind = "tree" if os.path.isdir(resolved) else "blob"
        url = "%s/%s/%s/%s" % (repo_url, kind, BRANCH, os.path.relpath(resolved, REPO))
        return match.group(1) + url + ("#" + fragment if fragment else "") + match.group(3)

    return MD_LINK.sub(replace, text)


# ---------------------------------------------------------------------------------------------------------------------
# build

def run(cmd, **kwargs):
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    if proc.returncode != 0:
        raise SiteError("%s failed (%d):\n%s%s" % (" ".join(cmd[:3]), proc.returncode, proc.stdout[-4000:],
                                                   proc.stderr[-4000:]))
    return proc


# The labels of Ansible's own documentation that antsibull-docs' pages refer to (return values common to all
# modules, configuration settings...). Sphinx resolves them through an intersphinx inventory; the real one is
# downloaded from docs.ansible.com, which these machines cannot reach, so the site ships these few entries itself
# and links to the same addresses.
ANSIBLE_DOCS = "https://docs.ansible.com/projects/ansible/devel/"
ANSIBLE_LABELS = {
    "common_return_values": ("reference_appendices/common_return_values.html#common-return-values",
                             "Return Values"),
    "ansible_configuration_settings": ("reference_appendices/config.html#ansible-configuration-settings",
                                       "Ansible Configuration Settings"),
    "action_plugins": ("plugins/action.html#action-plugins", "Action plugins"),
}
ANSIBLE_ENVVARS = ("ANSIBLE_CACHE_PLUGIN", "ANSIBLE_CACHE_PLUGIN_CONNECTION", "ANSIBLE_CACHE_PLUGIN_PREFIX",
                   "ANSIBLE_CACHE_PLUGIN_TIMEOUT")


def write_ansible_inventory(path):
    """A Sphinx inventory (version 2) of ANSIBLE_LABELS and ANSIBLE_ENVVARS, read by conf.py's intersphinx."""
    import zlib

    lines = ["%s std:label -1 %s %s" % (name, uri, title) for name, (uri, title) in sorted(ANSIBLE_LABELS.items())]
    lines += ["%s std:envvar 1 reference_appendices/config.html#envvar-$ -" % name for name in ANSIBLE_ENVVARS]
    with open(path, "wb") as handle:
        handle.write(b"# Sphinx inventory version 2\n# Project: Ansible\n# Version: devel\n"
                     b"# The remainder of this file is compressed using zlib.\n")
        handle.write(zlib.compress(("\n".join(lines) + "\n").encode()))


def build(dest):
    rst = os.path.join(dest, "rst")
    out = os.path.join(dest, "html")
    shutil.rmtree(dest, ignore_errors=True)
    # antsibull-docs refuses a destination that others can write to.
    os.makedirs(rst, mode=0o700)
    os.chmod(rst, 0o700)
    bindir = os.path.dirname(sys.executable)
    run([os.path.join(bindir, "antsibull-docs"), "--config-file", os.path.join(HERE, "antsibull-docs.cfg"),
         "collection", "--cleanup", "everything", "--use-current", "--fail-on-error", "--dest-dir", rst, COLLECTION])
    repo_url = repository_url()
    os.makedirs(os.path.join(rst, "guides"))
    for name in guides():
        with open(os.path.join(DOCS, name)) as handle:
            text = rewrite_links(handle.read(), repo_url)
        with open(os.path.join(rst, "guides", name), "w") as handle:
            handle.write(text)
    shutil.copy(os.path.join(HERE, "index.rst"), os.path.join(rst, "index.rst"))
    write_ansible_inventory(os.path.join(dest, "ansible_devel.inv"))
    run([os.path.join(bindir, "sphinx-build"), "-b", "html", "-W", "--keep-going", "-q", "-c", HERE, rst, out])
    return out


# ---------------------------------------------------------------------------------------------------------------------
# link check

class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids = set()
        self.links = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name") if tag == "a" else ("id",):
            if attrs.get(key):
                self.ids.add(attrs[key])
        for key in ("href", "src"):
            if attrs.get(key) and not (tag == "link" and attrs.get("rel") in ("preconnect", "dns-prefetch")):
                self.links.append(attrs[key])


def check_links(site, repo_url=None):
    """Every link of every page of ``site``: returns (figures, problems)."""
    repo_url = repo_url or repository_url()
    pages = {}
    for directory, _dirs, files in os.walk(site):
        for name in files:
            if name.endswith(".html"):
                path = os.path.join(directory, name)
                parser = _Page()
                with open(path, encoding="utf-8") as handle:
                    parser.feed(handle.read())
                pages[os.path.normpath(path)] = parser
    problems = []
    figures = {"pages": len(pages), "internal": 0, "repository": 0, "external": 0}
    external = set()
    for path, page in sorted(pages.items()):
        where = os.path.relpath(path, site)
        for link in page.links:
            parsed = urllib.parse.urlsplit(link)
            if parsed.scheme in ("http", "https"):
                if re.match(r"^%s/(blob|tree)/" % re.escape(repo_url), link):
                    figures["repository"] += 1
                    rest = link[len(repo_url) + 1:].split("#")[0]
                    match = re.match(r"^(blob|tree)/%s/(.+)$" % re.escape(BRANCH), rest)
                    if not match or not os.path.exists(os.path.join(REPO, urllib.parse.unquote(match.group(2)))):
                        problems.append("%s: %s names nothing in the repository" % (where, link))
                else:
                    figures["external"] += 1
                    external.add(link)
                continue
            if parsed.scheme in ("mailto", "data", "javascript") or parsed.scheme:
                continue
            figures["internal"] += 1
            target = path if not parsed.path else os.path.normpath(
                os.path.join(os.path.dirname(path), urllib.parse.unquote(parsed.path)))
            if os.path.isdir(target):
                target = os.path.join(target, "index.html")
            if not os.path.exists(target):
                problems.append("%s: %s leads nowhere" % (where, link))
            elif parsed.fragment and target in pages and parsed.fragment not in pages[target].ids:
                problems.append("%s: %s: no element with id %r" % (where, link, parsed.fragment))
    figures["external_distinct"] = sorted(external)
    return figures, problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dest", default=os.path.join(REPO, "build", "docs"))
    parser.add_argument("--check-only", action="store_true", help="check the links of the site already built")
    args = parser.parse_args(argv)
    dest = os.path.abspath(args.dest)
    try:
        site = os.path.join(dest, "html") if args.check_only else build(dest)
        figures, problems = check_links(site)
    except SiteError as exc:
        print("docs: %s" % exc, file=sys.stderr)
        return 1
    print("docs: %d pages, %d internal links and %d repository links checked; %d links to other sites not fetched "
          "(no network here): %s" % (figures["pages"], figures["internal"], figures["repository"],
                                     figures["external"], ", ".join(figures["external_distinct"]) or "none"))
    if problems:
        print("docs: %d broken links:\n  %s" % (len(problems), "\n  ".join(problems)), file=sys.stderr)
        return 1
    print("docs: site in %s (open index.html)" % site)
    return 0


if __name__ == "__main__":
    sys.exit(main())
