# fatbin_manifest.cmake: writes manifest.json beside the fatbins, what bpgpu checks before it
# loads them (bpgpu/backends/cuda_source.py, fatbin_problems): the sha256 of every kernel source,
# the tunables the build was given (BPGPU_CUDA_DEFINES), the compiler flags that change the
# arithmetic, and the architectures. Run by the build (cmake -P) after the fatbins, so it follows
# every edit of a source.
#
#   cmake -DOUT=<file> -DKERNELS=<kernels dir> -DDEFINES=<a|b> -DFLAGS=<a|b> -DARCHITECTURES=<a|b>
#         -P fatbin_manifest.cmake          (lists joined with | on the command line)
foreach(name DEFINES FLAGS ARCHITECTURES)
  string(REPLACE "|" ";" items "${${name}}")
  set(quoted "")
  foreach(item IN LISTS items)
    list(APPEND quoted "\"${item}\"")
  endforeach()
  list(JOIN quoted ", " ${name}_JSON)
endforeach()

file(GLOB sources "${KERNELS}/*.cu" "${KERNELS}/*.cuh")
list(SORT sources)
set(entries "")
foreach(source IN LISTS sources)
  file(SHA256 "${source}" digest)
  get_filename_component(name "${source}" NAME)
  list(APPEND entries "    \"kernels/${name}\": \"${digest}\"")
endforeach()
list(JOIN entries ",\n" files)

file(WRITE "${OUT}" "{
  \"defines\": [${DEFINES_JSON}],
  \"flags\": [${FLAGS_JSON}],
  \"architectures\": [${ARCHITECTURES_JSON}],
  \"files_sha256\": {
${files}
  }
}
")
