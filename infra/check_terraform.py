#!/usr/bin/env python3
"""Static checks of the Terraform under infra/terraform, without providers or a plan.

- every .tf file parses (python-hcl2);
- each module and example pins Terraform >= 1.5 and the AWS provider ~> 5.0;
- in every module and example, every declared variable has a description and a type
  and is used (var.NAME outside its own declaration), and every output has a description;
- in every example, each module block's source exists; every argument it passes is a
  variable of that module, and every variable of the module without a default is passed;
  every module.X.Y it references (directly or through a for expression over module.X)
  is an output of module X;
- every templatefile() and file() under ${path.module} names a file that exists, or a
  template provided from elsewhere (EXTERNAL_TEMPLATES), which must then be passed
  exactly the variables it is known to take; a template that exists is passed exactly
  the variables it uses.

Usage: check_terraform.py [TERRAFORM_DIR]   (default: the terraform/ beside this file)
Exits 1 with one line per problem.
"""

import re
import sys
from pathlib import Path

import hcl2

# Templates that another part of the project provides, and the variables they take.
EXTERNAL_TEMPLATES = {
    ("worker_pool", "user_data.sh.tftpl"): {"api_url", "pool", "region", "token_parameter", "worker_args"},
}

META_ARGUMENTS = {"source", "version", "for_each", "count", "providers", "depends_on"}

problems = []
checked = []


def problem(where, message):
    problems.append(f"{where}: {message}")


def scalar(value):
    """python-hcl2 wraps attribute values in one-element lists in some versions."""
    while isinstance(value, list) and len(value) == 1:
        value = value[0]
    return value


def strip_comments(text):
    """Removes # and // line comments and /* */ blocks, leaving strings alone."""
    out = []
    i, n = 0, len(text)
    in_string = False
    while i < n:
        c = text[i]
        if in_string:
            out.append(c)
            if c == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 2
                continue
            if c == '"':
                in_string = False
            i += 1
        elif c == '"':
            in_string = True
            out.append(c)
            i += 1
        elif c == "#" or text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def matching_close(text, open_index):
    """Index of the bracket closing the one at open_index, or len(text)."""
    pairs = {"(": ")", "[": "]", "{": "}"}
    stack = []
    for i in range(open_index, len(text)):
        c = text[i]
        if c in pairs:
            stack.append(pairs[c])
        elif stack and c == stack[-1]:
            stack.pop()
            if not stack:
                return i
    return len(text)


class Module:
    def __init__(self, directory, root):
        self.directory = directory
        self.name = directory.name
        self.label = str(directory.relative_to(root))
        self.variables = {}  # name -> attributes
        self.variable_lines = {}  # file -> [(start, end)]
        self.outputs = {}
        self.modules = {}  # block name -> attributes
        self.terraform_blocks = []
        self.texts = {}  # file -> text
        for path in sorted(directory.glob("*.tf")):
            text = path.read_text()
            self.texts[path] = text
            try:
                document = hcl2.loads(text)
            except Exception as error:  # the parser's errors have no common base class
                problem(path, f"does not parse: {error}")
                continue
            checked.append(f"parsed {path}")
            for block in document.get("variable", []):
                for name, attributes in block.items():
                    self.variables[name] = attributes
                    start = attributes.get("__start_line__")
                    end = attributes.get("__end_line__")
                    if start is None:  # older parsers: find the block by its header
                        start, end = header_range(text, "variable", name)
                    self.variable_lines.setdefault(path, []).append((start, end))
            for block in document.get("output", []):
                self.outputs.update(block)
            for block in document.get("module", []):
                self.modules.update(block)
            self.terraform_blocks.extend(document.get("terraform", []))

    def code_without_variable_blocks(self):
        parts = []
        for path, text in self.texts.items():
            lines = text.splitlines()
            for start, end in self.variable_lines.get(path, []):
                for index in range(start - 1, min(end, len(lines))):
                    lines[index] = ""
            parts.append(strip_comments("\n".join(lines)))
        return "\n".join(parts)

    def code(self):
        return "\n".join(strip_comments(text) for text in self.texts.values())


def header_range(text, kind, name):
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if re.match(rf'\s*{kind}\s+"{re.escape(name)}"\s*{{', line):
            start = text.find("{", sum(len(x) + 1 for x in lines[:index]))
            end = matching_close(text, start)
            return index + 1, text.count("\n", 0, end) + 1
    return 0, 0


def check_versions(module):
    required_version = None
    aws = None
    for block in module.terraform_blocks:
        required_version = scalar(block.get("required_version")) or required_version
        for providers in block.get("required_providers", []):
            providers = scalar(providers)
            if isinstance(providers, dict) and "aws" in providers:
                aws = scalar(providers["aws"])
    if required_version is None or not re.fullmatch(r">=\s*1\.5(\.0)?", str(required_version).strip()):
        problem(module.label, f'terraform.required_version must be ">= 1.5", got {required_version!r}')
    if not isinstance(aws, dict) or scalar(aws.get("version")) != "~> 5.0" or scalar(aws.get("source")) != "hashicorp/aws":
        problem(module.label, f'required_providers.aws must be source "hashicorp/aws", version "~> 5.0", got {aws!r}')
    checked.append(f"{module.label}: Terraform >= 1.5, AWS provider ~> 5.0")


def check_variables_and_outputs(module):
    code = module.code_without_variable_blocks()
    for name, attributes in sorted(module.variables.items()):
        if not str(scalar(attributes.get("description", "")) or "").strip():
            problem(module.label, f"variable {name!r} has no description")
        if "type" not in attributes:
            problem(module.label, f"variable {name!r} has no type")
        if not re.search(rf"\bvar\.{re.escape(name)}\b", code):
            problem(module.label, f"variable {name!r} is declared but never used")
    for name, attributes in sorted(module.outputs.items()):
        if not str(scalar(attributes.get("description", "")) or "").strip():
            problem(module.label, f"output {name!r} has no description")
    checked.append(
        f"{module.label}: {len(module.variables)} variables described, typed and used; "
        f"{len(module.outputs)} outputs described"
    )


def check_templates(module):
    code = module.code()
    for function in ("templatefile", "file"):
        for match in re.finditer(rf"\b{function}\(", code):
            close = matching_close(code, match.end() - 1)
            arguments = code[match.end() : close]
            path_match = re.match(r'\s*"\$\{path\.module\}/([^"]+)"', arguments)
            if not path_match:
                problem(module.label, f"{function}() should name a file under ${{path.module}}: {arguments[:60]!r}")
                continue
            relative = path_match.group(1)
            target = (module.directory / relative).resolve()
            passed = None
            if function == "templatefile":
                brace = arguments.find("{", path_match.end())
                body = arguments[brace + 1 : matching_close(arguments, brace)] if brace >= 0 else ""
                passed = set(re.findall(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=", body, re.MULTILINE))
            external = EXTERNAL_TEMPLATES.get((module.name, relative))
            if target.is_file():
                if passed is not None:
                    used = set(re.findall(r"(?<!\$)\$\{\s*([A-Za-z_][A-Za-z0-9_]*)", target.read_text()))
                    used |= set(re.findall(r"%\{\s*(?:if|for)\s+(?:[A-Za-z_]\w*\s*,\s*)?([A-Za-z_]\w*)", target.read_text()))
                    if used - passed:
                        problem(module.label, f"{relative} uses {sorted(used - passed)}, not passed by templatefile()")
                    if passed - used:
                        problem(module.label, f"templatefile() passes {sorted(passed - used)}, unused by {relative}")
                checked.append(f"{module.label}: {function}({relative}) exists" + (" and takes what is passed" if passed is not None else ""))
            elif external is not None and passed is not None:
                if passed != external:
                    problem(
                        module.label,
                        f"{relative} (provided elsewhere) takes {sorted(external)}, templatefile() passes {sorted(passed)}",
                    )
                checked.append(f"{module.label}: templatefile({relative}) is provided elsewhere; passes {sorted(passed)}")
            else:
                problem(module.label, f"{function}() names {relative}, which does not exist")


def check_example(example, root):
    code = example.code()
    for block_name, attributes in sorted(example.modules.items()):
        source = scalar(attributes.get("source"))
        target = (example.directory / str(source)).resolve()
        if not target.is_dir():
            problem(example.label, f"module {block_name!r}: source {source!r} is not a directory")
            continue
        callee = MODULES.get(target) or Module(target, root)
        passed = {key for key in attributes if not key.startswith("__")} - META_ARGUMENTS
        for name in sorted(passed - set(callee.variables)):
            problem(example.label, f"module {block_name!r} passes {name!r}, which {callee.label} does not declare")
        required = {name for name, attrs in callee.variables.items() if "default" not in attrs}
        for name in sorted(required - passed):
            problem(example.label, f"module {block_name!r} does not pass {name!r}, required by {callee.label}")
        checked.append(
            f"{example.label}: module {block_name} ({callee.label}) gets {len(passed)} declared variables, "
            f"all {len(required)} required ones"
        )

    references = set()
    for match in re.finditer(r"\bmodule\.([A-Za-z_][\w-]*)(?:\[[^\]]*\])?\.([A-Za-z_][\w-]*)", code):
        references.add((match.group(1), match.group(2)))
    # for id, pool in module.X : pool.Y   /   for pool in module.X : pool.Y
    for match in re.finditer(r"\bfor\s+([A-Za-z_]\w*)(?:\s*,\s*([A-Za-z_]\w*))?\s+in\s+module\.([A-Za-z_][\w-]*)\s*:", code):
        value = match.group(2) or match.group(1)
        opening = max(code.rfind("[", 0, match.start()), code.rfind("{", 0, match.start()))
        scope = code[match.end() : matching_close(code, opening)]
        for attribute in re.findall(rf"\b{value}\.([A-Za-z_][\w-]*)", scope):
            references.add((match.group(3), attribute))
    for block_name, output in sorted(references):
        attributes = example.modules.get(block_name)
        if attributes is None:
            problem(example.label, f"module.{block_name}.{output}: no module {block_name!r} here")
            continue
        target = (example.directory / str(scalar(attributes.get("source")))).resolve()
        callee = MODULES.get(target)
        if callee is not None and output not in callee.outputs:
            problem(example.label, f"module.{block_name}.{output}: {callee.label} has no output {output!r}")
    checked.append(f"{example.label}: {len(references)} module output references exist")


MODULES = {}


def main():
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "terraform"
    root = root.resolve()
    module_dirs = sorted(p for p in (root / "modules").iterdir() if p.is_dir())
    example_dirs = sorted(p for p in (root / "examples").iterdir() if p.is_dir())
    if not module_dirs or not example_dirs:
        print(f"no modules or examples under {root}", file=sys.stderr)
        return 1
    all_tf = {p.resolve() for p in root.rglob("*.tf") if ".terraform" not in p.parts}
    for directory in module_dirs:
        MODULES[directory.resolve()] = Module(directory, root.parent)
    examples = [Module(directory, root.parent) for directory in example_dirs]
    covered = {path.resolve() for module in [*MODULES.values(), *examples] for path in module.texts}
    for path in sorted(all_tf - covered):
        try:
            hcl2.loads(path.read_text())
            checked.append(f"parsed {path}")
        except Exception as error:
            problem(path, f"does not parse: {error}")
    for module in [*MODULES.values(), *examples]:
        check_versions(module)
        check_variables_and_outputs(module)
        check_templates(module)
    for example in examples:
        check_example(example, root.parent)

    for line in checked:
        print(f"  ok  {line}")
    if problems:
        print(f"check_terraform: {len(problems)} problem(s):", file=sys.stderr)
        for line in problems:
            print(f"  FAIL  {line}", file=sys.stderr)
        return 1
    print(f"check_terraform: {len(all_tf)} files, {len(MODULES)} modules, {len(examples)} example(s): no problems")
    return 0


if __name__ == "__main__":
    sys.exit(main())
