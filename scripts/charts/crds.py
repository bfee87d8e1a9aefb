"""The served versions of the CustomResourceDefinitions in some YAML files: what both chart
checks (check_examples.py, stub_apiserver.py) read from crds/."""

import yaml


def served_versions(crd_files):
    """Yields (path, CRD spec, version) for every served version of every CRD in `crd_files`."""
    for path in crd_files:
        with open(path, encoding="utf-8") as f:
            for doc in yaml.safe_load_all(f):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                for version in doc["spec"]["versions"]:
                    if version.get("served", True):
                        yield path, doc["spec"], version
