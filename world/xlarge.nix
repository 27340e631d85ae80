# The packages of `flox/xlarge`: an environment of the size the biggest real ones have
# (a CUDA/ML stack, a full toolchain), generated without nixpkgs. A separate stack from
# flox/large: the two share only busybox, bash and coreutils.
#
# Closure: busybox + bash + coreutils + xlarge-pydata (+ 40 python3.12-* package trees) +
# xlarge-app (+ 1,000 libxlarge-* libraries) = 1,045 store paths, about 1.6 GB unpacked.
# - a libxlarge library is a shared-library-sized blob (0.8 to 2.3 MB, 1.57 MB on average)
#   made of two slices, one cut out of the real busybox binary and one out of bash (so
#   the cache compresses it as it would machine code), plus a header, a pkg-config file,
#   docs, and the store paths of the libraries it links against;
# - a python3.12 package is a tree of small generated modules and metadata files;
# - the libraries form 10 layers of 100 (each links 2 of the layer below), so Nix builds
#   a layer in parallel.
# Everything is a pure function of the index, so the world stays deterministic.
{ mk, bb, bashSrc, sh }:
let
  pad3 = i: if i < 10 then "00${toString i}" else if i < 100 then "0${toString i}" else toString i;
  pad4 = i: if i < 1000 then "0${pad3 i}" else toString i;
  mod = a: b: a - (a / b) * b;

  layers = 10;
  perLayer = 100;
  # Whole 4 KiB blocks in busybox (1.9 MB) and bash (2.3 MB).
  busyboxBlocks = 483;
  bashBlocks = 571;

  # Library j of `layer`; it links libraries of layer-1 (none for layer 0).
  lib = layer: j:
    let
      i = layer * perLayer + j;
      name = "xlarge${pad4 i}";
      # 200 to 569 blocks of 4 KiB (0.8 to 2.3 MB), half from busybox, half from bash;
      # which binary comes first alternates.
      count = 200 + mod (i * 41) 370;
      bbCount = count / 2;
      bashCount = count - bbCount;
      bbSkip = mod (i * 59) (busyboxBlocks - bbCount);
      bashSkip = mod (i * 71) (bashBlocks - bashCount);
      bbSlice = "dd if=\"$srcBusybox\" bs=4096 skip=${toString bbSkip} count=${toString bbCount} 2>/dev/null";
      bashSlice = "dd if=\"$srcBash\" bs=4096 skip=${toString bashSkip} count=${toString bashCount} 2>/dev/null";
      deps = if layer == 0 then [ ] else [
        libs.${toString (layer - 1)}.${toString j}
        libs.${toString (layer - 1)}.${toString (mod (j * 7 + 3) perLayer)}
      ];
    in
    mk {
      name = "lib${name}-1.0";
      extra = {
        srcBusybox = "${bb}/bin/busybox";
        srcBash = "${bashSrc}/bin/bash";
        inherit deps;
      };
      script = ''
        mkdir -p $out/lib/pkgconfig $out/include $out/share/doc/lib${name} $out/nix-support
        {
          ${if mod i 2 == 0 then bbSlice else bashSlice}
          ${if mod i 2 == 0 then bashSlice else bbSlice}
          printf 'lib${name} build ${toString i}\n'
        } > $out/lib/lib${name}.so.1.0
        ln -s lib${name}.so.1.0 $out/lib/lib${name}.so.1
        ln -s lib${name}.so.1 $out/lib/lib${name}.so
        printf '%s\n' '#ifndef ${name}_H' '#define ${name}_H' 'int ${name}_init(void);' '#endif' > $out/include/${name}.h
        printf '%s\n' "prefix=$out" 'libdir=''${prefix}/lib' "Name: lib${name}" 'Version: 1.0' \
          'Libs: -L''${libdir} -l${name}' > $out/lib/pkgconfig/lib${name}.pc
        printf 'lib${name}: generated library %s of the imageless test world (flox/xlarge)\n' ${toString i} \
          > $out/share/doc/lib${name}/README
        for d in $deps; do echo "$d"; done > $out/nix-support/linked-libraries
      '';
    };

  # libs."<layer>"."<j>"
  libs = builtins.listToAttrs (builtins.genList
    (layer: {
      name = toString layer;
      value = builtins.listToAttrs (builtins.genList (j: { name = toString j; value = lib layer j; }) perLayer);
    })
    layers);
  allLibs = builtins.concatLists (builtins.genList
    (layer: builtins.genList (j: libs.${toString layer}.${toString j}) perLayer)
    layers);

  # A python3.12 site-package: 20 to 59 generated modules in 3 subpackages, metadata.
  pyPkg = i:
    let name = "xpkg${pad3 i}"; in
    mk {
      name = "python3.12-${name}-1.0";
      script = ''
        site=$out/lib/python3.12/site-packages
        mkdir -p $site/${name}/core $site/${name}/ops $site/${name}/tests $site/${name}-1.0.dist-info
        awk -v site=$site -v pkg=${name} -v n=${toString (20 + mod (i * 17) 40)} 'BEGIN {
          split("core ops tests", subs, " ")
          record = site "/" pkg "-1.0.dist-info/RECORD"
          for (m = 0; m < n; m++) {
            f = site "/" pkg "/" subs[m % 3 + 1] "/mod" m ".py"
            print "\"\"\"" pkg " module " m ": generated for the imageless test world (flox/xlarge).\"\"\"" > f
            print "import math\n" > f
            for (k = 0; k < 20 + (m * 11) % 60; k++) {
              print "def g" m "_" k "(x, y=" k "):" > f
              print "    \"\"\"Return a value derived from x (" pkg ", " m ", " k ").\"\"\"" > f
              print "    return math.log1p(abs(x * " k " + y)) + " m "\n" > f
            }
            close(f)
            init = site "/" pkg "/" subs[m % 3 + 1] "/__init__.py"
            print "from . import mod" m > init
            print pkg "/" subs[m % 3 + 1] "/mod" m ".py,," > record
          }
          top = site "/" pkg "/__init__.py"
          print "__version__ = \"1.0\"" > top
          meta = site "/" pkg "-1.0.dist-info/METADATA"
          print "Metadata-Version: 2.1\nName: " pkg "\nVersion: 1.0" > meta
        }'
      '';
    };
  pyPkgs = builtins.genList pyPkg 40;
in
{
  # A Python-like package tree: the environment's site-packages, one store path each.
  xlarge_pydata = mk {
    name = "xlarge-pydata-1.0";
    extra.pkgs = pyPkgs;
    script = ''
      mkdir -p $out/lib/python3.12 $out/nix-support
      for p in $pkgs; do echo "$p/lib/python3.12/site-packages"; done > $out/lib/python3.12/xlarge-pydata.pth
      for p in $pkgs; do echo "$p"; done > $out/nix-support/site-packages
    '';
  };

  # The application: its libraries are found through lib/xlarge-app/libraries.
  xlarge_app = mk {
    name = "xlarge-app-1.0";
    extra = { libs = allLibs; scriptText = "#!${sh}\n"; };
    script = ''
      mkdir -p $out/bin $out/lib/xlarge-app
      for l in $libs; do echo "$l"; done > $out/lib/xlarge-app/libraries
      printf '%s' "$scriptText" > $out/bin/xlarge-app
      echo "echo \"xlarge-app: \$(wc -l < $out/lib/xlarge-app/libraries) libraries\"" >> $out/bin/xlarge-app
      chmod 555 $out/bin/xlarge-app
    '';
  };
}
