# Sphinx configuration of the documentation site: the plugin and role docs antsibull-docs renders from the
# collection, and the guides of docs/*.md through MyST. Built by docs/site/build.py (`make docs`).
project = "virtfleet.compute"
copyright = "virtfleet.compute contributors"
title = "virtfleet.compute documentation"
html_short_title = "virtfleet.compute"

extensions = ["myst_parser", "sphinx_antsibull_ext"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
# The guides link to sections by their GitHub-style anchors (#validation).
myst_heading_anchors = 3
myst_enable_extensions = ["deflist"]

pygments_style = "ansible"
highlight_language = "YAML+Jinja"
html_theme = "sphinx_ansible_theme"
html_show_sphinx = False
html_use_smartypants = True
html_use_modindex = False
html_use_index = False
html_copy_source = False
html_theme_options = {
    "collapse_navigation": False,
    "display_version": False,
    "show_extranav": False,
    "show_rtd_ethical_ads": False,
    # The theme's home link defaults to "/", the root of docs.ansible.com; this site has no root of its own.
    "documentation_home_url": "https://github.com/virtfleet/compute",
}

# Ansible's own docs (Return Values, configuration settings) through an inventory build.py writes: these machines
# cannot download docs.ansible.com's. Nothing else is linked through intersphinx.
extensions.append("sphinx.ext.intersphinx")
intersphinx_mapping = {
    "ansible_devel": ("https://docs.ansible.com/projects/ansible/devel/", (None, "../ansible_devel.inv")),
}
intersphinx_disabled_reftypes = []
default_role = "any"
nitpicky = True
