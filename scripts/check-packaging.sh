#!/usr/bin/env bash
# Packaging checks (part of `make test`), each in a throwaway venv:
#   1. the sdist ships the generated C and installs WITHOUT Cython -> compiled extension;
#   2. the sdist installs with NO working compiler -> loud banner, pure Python, still works;
#   3. with BANTAI_REQUIRE_EXTENSIONS=1 the compiler failure is an error instead;
#   4. `python -m build --wheel` gives a wheel that imports the extension.
set -euo pipefail
PY=${PY:-.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf dist
"$PY" -m build --sdist --wheel --outdir "$work/dist" . >"$work/build.log" 2>&1 || {
  cat "$work/build.log"; exit 1; }
sdist=$(ls "$work"/dist/bantai-*.tar.gz)
wheel=$(ls "$work"/dist/bantai-*.whl)
tar -tzf "$sdist" >"$work/sdist.txt"
for generated in _speedups.c _single_key.c; do
  grep -q "src/bantai/redis/$generated" "$work/sdist.txt" || {
    echo "FAIL: the sdist does not ship the generated $generated"; exit 1; }
done

python_of_venv="$work/venv/bin/python"
"$PY" -m venv "$work/venv"
"$python_of_venv" -m pip install -q --upgrade pip "setuptools>=77" wheel
"$python_of_venv" -m pip install -q redis hiredis pydantic-core
check() {  # expected implementation
  (cd "$work" && "$python_of_venv" -c "
import bantai.redis, sys
from bantai import create_memory_storage, rate_limit, rate_limit_schema
# pydantic is optional: the core, the storages and rate limiting work without it
storage = create_memory_storage(rate_limit_schema)
assert rate_limit.consume(storage, {'type': 'token-bucket', 'limit': 1, 'period': '1m',
                                    'key': 'k'}).allowed
print('   IMPLEMENTATION =', bantai.redis.IMPLEMENTATION, '(works without pydantic)')
sys.exit(bantai.redis.IMPLEMENTATION != '$1')")
}
if "$python_of_venv" -c "import Cython" 2>/dev/null; then echo "FAIL: Cython leaked in"; exit 1; fi

echo "1. sdist without Cython (uses the shipped C file)"
"$python_of_venv" -m pip install -q --no-build-isolation --no-deps "$sdist"
check cython
"$python_of_venv" -m pip uninstall -q -y bantai

echo "2. sdist without a compiler (falls back to pure Python, with a banner)"
CC=/bin/false "$python_of_venv" -m pip install -v --no-build-isolation --no-deps "$sdist" \
  >"$work/nocc.log" 2>&1
grep -q "could not be built" "$work/nocc.log" || { echo "FAIL: no banner"; exit 1; }
check python
"$python_of_venv" -m pip uninstall -q -y bantai

echo "3. BANTAI_REQUIRE_EXTENSIONS=1 without a compiler fails the install"
if CC=/bin/false BANTAI_REQUIRE_EXTENSIONS=1 "$python_of_venv" -m pip install -q \
     --no-build-isolation --no-deps "$sdist" >"$work/req.log" 2>&1; then
  echo "FAIL: the install succeeded without the extension"; exit 1
fi

echo "4. the wheel imports the compiled extension"
"$python_of_venv" -m pip install -q --no-deps "$wheel"
check cython
echo "packaging checks passed"
