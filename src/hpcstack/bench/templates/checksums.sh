# Prints "NAME SHA256 PATH" for the hpcc binary and the BLAS and MPI libraries it loads,
# the same way on the host and inside the image, so hpcstack bench can refuse to
# compare two different builds. Run with: sh -c "$(cat checksums.sh)"
set -e
bin=$(command -v hpcc) || exit 0  # none at all: the comparison says so
real=$(readlink -f "$bin")
echo "hpcc $(sha256sum < "$real" | cut -d' ' -f1) $real"
ldd "$real" | while read -r name arrow path rest; do
  case $name in
    libblas.so.3|libopenblas.so.0|liblapack.so.3|libmpi.so.40)
      lib=$(readlink -f "$path")
      echo "$name $(sha256sum < "$lib" | cut -d' ' -f1) $lib" ;;
  esac
done
