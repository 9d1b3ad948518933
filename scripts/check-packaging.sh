#!/usr/bin/env bash
# Packaging checks (part of `make test`), each in a throwaway venv:
#   1. the sdist ships the generated C and installs WITHOUT Cython -> compiled extension;
#   2. the sdist installs with NO working compiler -> loud banner, pure Python, still works;
#   3. with BANTAI_REQUIRE_EXTENSIONS=1 the compiler failure is an error instead;
#   4. `python -m build --wheel` gives a wheel that imports the extension, and the demo
#      runs from it without pydantic;
#   5. the sdist runs its own Redis-free tests (from the unpacked sdist, against the
#      package installed from it).
# Before those: what the sdist and the wheel contain (LICENSE, CHANGELOG, tests; no C or
# Cython sources in the wheel, a stripped extension).
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
for shipped in LICENSE CHANGELOG.md tests/__init__.py tests/conftest.py tests/models.py \
               tests/test_implementations.py; do
  grep -qx "bantai-[^/]*/$shipped" "$work/sdist.txt" || {
    echo "FAIL: the sdist does not ship $shipped"; exit 1; }
done
echo "0. contents: the sdist ships LICENSE, CHANGELOG.md, the tests and the generated C"

"$PY" -m zipfile -l "$wheel" >"$work/wheel.txt"
grep -q "\.dist-info/licenses/LICENSE " "$work/wheel.txt" || {
  echo "FAIL: the wheel has no .dist-info/licenses/LICENSE"; exit 1; }
if grep -E "\.(c|pyx) " "$work/wheel.txt"; then
  echo "FAIL: the wheel ships C or Cython sources (above)"; exit 1
fi
mkdir "$work/wheel" && "$PY" -m zipfile -e "$wheel" "$work/wheel"
shopt -s nullglob
extensions=("$work"/wheel/bantai/redis/_*.so)
shopt -u nullglob
[ "${#extensions[@]}" -eq 2 ] || { echo "FAIL: expected 2 extensions in the wheel"; exit 1; }
if [ "$(uname -s)" = Linux ]; then
  for so in "${extensions[@]}"; do
    # `file` says "stripped" (not "not stripped", not "with debug_info"); without `file`,
    # `nm` must find no symbol table beyond the dynamic one.
    if command -v file >/dev/null; then
      description=$(file -b "$so")
      if [[ "$description" != *", stripped"* || "$description" == *debug_info* ]]; then
        echo "FAIL: $(basename "$so") is not stripped: $description"; exit 1
      fi
    else
      nm "$so" 2>&1 | grep -q "no symbols" || {
        echo "FAIL: $(basename "$so") has a symbol table (not stripped)"; exit 1; }
    fi
  done
  echo "   the wheel: LICENSE in .dist-info/licenses, no .c/.pyx, stripped extensions" \
    "($(du -b "${extensions[@]}" | awk '{s += $1} END {print int(s / 1024)}') KiB)"
else
  echo "   the wheel: LICENSE in .dist-info/licenses, no .c/.pyx (strip check: Linux only)"
fi

python_of_venv="$work/venv/bin/python"
"$PY" -m venv "$work/venv"
"$python_of_venv" -m pip install -q --upgrade pip "setuptools>=77" wheel
"$python_of_venv" -m pip install -q redis hiredis pydantic-core
check() {  # expected implementation
  # The pure-Python fallback warns (PurePythonWarning) on this platform; the compiled
  # build must not.
  (cd "$work" && "$python_of_venv" -c "
import bantai.redis, sys
from bantai import create_memory_storage, rate_limit, rate_limit_schema
# pydantic is optional: the core, the storages and rate limiting work without it
storage = create_memory_storage(rate_limit_schema)
assert rate_limit.consume(storage, {'type': 'token-bucket', 'limit': 1, 'period': '1m',
                                    'key': 'k'}).allowed
print('   IMPLEMENTATION =', bantai.redis.IMPLEMENTATION, '(works without pydantic)')
sys.exit(bantai.redis.IMPLEMENTATION != '$1')") 2>"$work/import.err" || {
    cat "$work/import.err"; return 1; }
  if [ "$1" = python ]; then
    grep -q "PurePythonWarning: bantai's compiled extension is missing" "$work/import.err" || {
      cat "$work/import.err"; echo "FAIL: the pure-Python fallback did not warn"; return 1; }
    echo "   (and warned: PurePythonWarning)"
  elif [ -s "$work/import.err" ]; then
    cat "$work/import.err"; echo "FAIL: unexpected output on stderr"; return 1
  fi
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

echo "   python -m bantai.demo from the wheel, without pydantic"
if "$python_of_venv" -c "import pydantic" 2>/dev/null; then echo "FAIL: pydantic leaked in"; exit 1; fi
(cd "$work" && "$python_of_venv" -m bantai.demo) >"$work/demo.log" 2>&1 || {
  cat "$work/demo.log"; echo "FAIL: the demo failed without pydantic"; exit 1; }
for expected in "count = 400 (expected 400)" "count = 50 (expected 50)" \
                "user 1, attempt 4: deny" "done."; do
  grep -qF "$expected" "$work/demo.log" || {
    cat "$work/demo.log"; echo "FAIL: the demo did not print '$expected'"; exit 1; }
done
echo "   $(head -n 1 "$work/demo.log" | sed 's/NOTICE: //') ... done."
"$python_of_venv" -m pip uninstall -q -y bantai

echo "5. the sdist runs its own tests (tests/test_implementations.py: no Redis server needed)"
mkdir "$work/unpacked" && tar -xzf "$sdist" -C "$work/unpacked"
unpacked=$(ls -d "$work"/unpacked/bantai-*)
BANTAI_REQUIRE_EXTENSIONS=1 "$python_of_venv" -m pip install -q --no-build-isolation \
  --no-deps "$sdist"
# The tests' own dependencies (pydantic: their models), after the no-pydantic checks above.
"$python_of_venv" -m pip install -q pytest pytest-timeout hypothesis pydantic
(cd "$unpacked" && "$python_of_venv" -c "
import bantai, sys
sys.exit(f'FAIL: bantai imported from {bantai.__file__}, not the installed package'
         if 'site-packages' not in bantai.__file__ else 0)") || exit 1
(cd "$unpacked" && BANTAI_EXPECT_IMPLEMENTATION=cython "$python_of_venv" -m pytest -q \
   -p no:cacheprovider tests/test_implementations.py) >"$work/sdist-tests.log" 2>&1 || {
  cat "$work/sdist-tests.log"; echo "FAIL: the sdist's tests failed"; exit 1; }
echo "   $(tail -n 1 "$work/sdist-tests.log")"
echo "packaging checks passed"
