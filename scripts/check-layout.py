#!/usr/bin/env python3
"""The layout rules of ARCHITECTURE.md, checked: no import circle between the modules of a
crate, no non-test source file over 800 lines, and no library crate (crates/, proto/) that
depends on a service crate (services/). Prints what breaks a rule and exits 1 if anything does.

Import circles: 
A module depends on another when its non-test code names it: `crate::a::…` or `super::…`
(resolved), or an item defined in another module's file (a crate-root item named from a child is
an edge to the root). `#[cfg(test)]` modules and files under tests/ are left out. Prints each
circle found and exits 1 if there is one.
"""
import os, re, sys

def modules(src):
    """module path (tuple) -> file, for a crate's src/."""
    found = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith('.rs'):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), src)
            parts = rel[:-3].split(os.sep)
            if parts == ['main'] and os.path.exists(os.path.join(src, 'lib.rs')):
                continue  # the binary is a crate of its own, over the library
            if parts[-1] in ('lib', 'main'):
                parts = parts[:-1]
            elif parts[-1] == 'mod':
                parts = parts[:-1]
            if 'tests' in parts or parts[-1:] == ['tests'] or parts[-1:] == ['bin']:
                continue
            found[tuple(parts)] = os.path.join(dirpath, f)
    return found

def strip_tests(text):
    """The text without `#[cfg(test)] mod … { … }` blocks and `#[cfg(test)] mod x;` lines."""
    out, i = [], 0
    while True:
        m = re.search(r'#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?(mod|impl|fn|use)\b', text[i:])
        if not m:
            out.append(text[i:]); break
        start = i + m.start()
        out.append(text[i:start])
        j = i + m.end()
        brace = text.find('{', j); semi = text.find(';', j)
        if semi != -1 and (brace == -1 or semi < brace):
            i = semi + 1; continue
        depth, k = 0, brace
        while k < len(text):
            if text[k] == '{': depth += 1
            elif text[k] == '}':
                depth -= 1
                if depth == 0: break
            k += 1
        i = k + 1
    return ''.join(out)

def paths(text):
    """Every path that starts with crate:: or super:: (use trees expanded one level)."""
    text = re.sub(r'//[^\n]*', '', text)
    found = []
    for m in re.finditer(r'\b(crate|super(?:::super)*)::((?:\w+::)*)(\{[^;]*?\}|\w+)', text, re.S):
        base, middle, last = m.group(1), m.group(2), m.group(3)
        if last.startswith('{'):
            for item in re.split(r',', last[1:-1]):
                item = item.strip().split(' as ')[0]
                if item:
                    found.append((base, middle + item.replace(' ', '')))
        else:
            found.append((base, middle + last))
    return found

def defined_in(file):
    text = strip_tests(open(file).read())
    return set(re.findall(r'^\s*pub(?:\([^)]*\))?\s+(?:async\s+)?(?:fn|struct|enum|trait|type|const|static)\s+(\w+)', text, re.M)) | \
        set(re.findall(r'^(?:async\s+)?(?:fn|struct|enum|trait|type|const|static)\s+(\w+)', text, re.M))

def crate_graph(src):
    mods = modules(src)
    items = {m: defined_in(f) for m, f in mods.items()}
    graph = {m: set() for m in mods}
    for m, f in mods.items():
        text = strip_tests(open(f).read())
        for base, path in paths(text):
            segs = [s for s in path.split('::') if s and s != 'self']
            if base == 'crate':
                here = ()
            else:
                ups = base.count('super')
                here = m[:-ups] if ups <= len(m) else ()
            # walk down the module tree as far as the path names modules
            target = here
            for s in segs:
                if target + (s,) in mods:
                    target = target + (s,)
                else:
                    break
            if target != m and target in mods and not (target == m[:len(target)] and target != () and False):
                # naming an item of the target module (or the module itself)
                if target == () and segs and segs[0] not in items.get((), set()):
                    # crate::x where x is a re-export in lib.rs: not an item defined there
                    continue
                if len(target) < len(m) and m[:len(target)] == target and target != ():
                    # a child naming its parent: only counts when the item is defined in the parent
                    rest = segs[len(target) - len(here):] if base == 'crate' else segs
                    if not rest or rest[0] not in items[target]:
                        continue
                graph[m].add(target)
        # children named by their bare name (`grpc::server`, `use handler::X`)
        for child in mods:
            if len(child) == len(m) + 1 and child[:len(m)] == m:
                if re.search(r'(?<![:\w])' + child[-1] + r'::', re.sub(r'//[^\n]*', '', text)):
                    graph[m].add(child)
    return graph

def cycles(graph):
    """The strongly connected components of more than one module (Tarjan), each as a list."""
    index, low, on, stack, found, counter = {}, {}, set(), [], [], [0]
    def visit(n):
        index[n] = low[n] = counter[0]; counter[0] += 1
        stack.append(n); on.add(n)
        for d in sorted(graph[n]):
            if d not in index:
                visit(d); low[n] = min(low[n], low[d])
            elif d in on:
                low[n] = min(low[n], index[d])
        if low[n] == index[n]:
            component = []
            while True:
                d = stack.pop(); on.discard(d); component.append(d)
                if d == n: break
            if len(component) > 1:
                found.append(sorted(component))
    for n in sorted(graph):
        if n not in index:
            visit(n)
    return found

MAX_LINES = 800

def is_test_file(path):
    parts = path.split(os.sep)
    return 'tests' in parts or os.path.basename(path) == 'tests.rs' or os.path.basename(path).endswith('_tests.rs')

def long_files(root):
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in ('target', '.git', 'node_modules')]
        for f in files:
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, root)
            if f.endswith('.rs') and not is_test_file(rel):
                lines = sum(1 for _ in open(path, encoding='utf-8', errors='replace'))
                if lines > MAX_LINES:
                    yield rel, lines

def packages(root):
    """name -> (folder, [dependency names]) for every workspace package."""
    found = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in ('target', '.git', 'node_modules')]
        if 'Cargo.toml' in files and dirpath != root:
            text = open(os.path.join(dirpath, 'Cargo.toml')).read()
            name = re.search(r'^name\s*=\s*"([^"]+)"', text, re.M)
            deps = re.search(r'^\[dependencies\](.*?)(?=^\[|\Z)', text, re.M | re.S)
            names = re.findall(r'^([\w-]+)\s*[.=]', deps.group(1), re.M) if deps else []
            if name:
                found[name.group(1)] = (os.path.relpath(dirpath, root), names)
    return found

def wrong_direction(root):
    pkgs = packages(root)
    for name, (folder, deps) in sorted(pkgs.items()):
        if folder.split(os.sep)[0] not in ('crates', 'proto'):
            continue
        for dep in deps:
            if dep in pkgs and pkgs[dep][0].split(os.sep)[0] == 'services':
                yield name, dep

root = sys.argv[1] if len(sys.argv) > 1 else '.'
bad = 0
for dirpath, dirs, files in os.walk(root):
    dirs[:] = [d for d in dirs if d not in ('target', '.git', 'node_modules')]
    if 'Cargo.toml' in files and os.path.isdir(os.path.join(dirpath, 'src')):
        src = os.path.join(dirpath, 'src')
        for c in cycles(crate_graph(src)):
            bad += 1
            print(f"{os.path.relpath(dirpath, root)}: " + ', '.join('::'.join(m) or 'crate' for m in c))
for rel, lines in long_files(root):
    bad += 1
    print(f"{rel}: {lines} lines (at most {MAX_LINES} outside tests)")
for library, service in wrong_direction(root):
    bad += 1
    print(f"{library} is a library and depends on the service crate {service}")
print(f"layout: {bad} problem(s)")
sys.exit(1 if bad else 0)
