# The packages of `flox/large`: an environment of the size real ones have (a Python
# data-science stack, a toolchain), generated without nixpkgs.
#
# Closure: busybox + bash + coreutils + pydata (+ 60 python3.11-* package trees) +
# large-app (+ 250 liblarge-* libraries) = 315 store paths, about 240 MB unpacked.
# - a liblarge library is a shared-library-sized blob cut out of the real busybox or
#   bash binary (so the cache compresses it as it would machine code) plus a header,
#   a pkg-config file, docs, and the store paths of the libraries it links against;
# - a python3.11 package is a tree of small generated modules and metadata files;
# - the libraries form 5 layers of 50 (each links 2 of the layer below), so Nix builds
#   a layer in parallel and the whole set in a few seconds.
# Everything is a pure function of the index, so the world stays deterministic.
{ mk, bb, bashSrc, sh }:
let
  pad = i: if i < 10 then "00${toString i}" else if i < 100 then "0${toString i}" else toString i;
  mod = a: b: a - (a / b) * b;

  layers = 5;
  perLayer = 50;
  libName = layer: j: "large${pad (layer * perLayer + j)}";

  # Library j of `layer`; it links libraries of layer-1 (none for layer 0).
  lib = layer: j: libRev 1 layer j;
  # Revision `rev` of that library: rev 1 is version 1.0 (generation 1's, unchanged text so
  # its store paths stay the same), rev 2 version 1.1 with one more line in its .so.
  libRev = rev: layer: j:
    let
      i = layer * perLayer + j;
      name = libName layer j;
      version = if rev == 1 then "1.0" else "1.${toString (rev - 1)}";
      revLine = if rev == 1 then "" else " rev ${toString rev}";
      # 4 KiB blocks cut out of busybox (1.9 MB) or bash (2.3 MB): 0.25 to 1.5 MB.
      count = 60 + mod (i * 37) 300;
      source = if mod i 2 == 0 then "${bb}/bin/busybox" else "${bashSrc}/bin/bash";
      sourceBlocks = if mod i 2 == 0 then 483 else 571;
      skip = mod (i * 53) (sourceBlocks - count);
      deps = if layer == 0 then [ ] else [
        libs.${toString (layer - 1)}.${toString j}
        libs.${toString (layer - 1)}.${toString (mod (j * 7 + 3) perLayer)}
      ];
    in
    mk {
      name = "lib${name}-${version}";
      extra = { inherit source; deps = deps; };
      script = ''
        mkdir -p $out/lib/pkgconfig $out/include $out/share/doc/lib${name} $out/nix-support
        dd if="$source" of=$out/lib/lib${name}.so.1.0 bs=4096 skip=${toString skip} count=${toString count} 2>/dev/null
        printf 'lib${name} build ${toString i}${revLine}\n' >> $out/lib/lib${name}.so.1.0
        ln -s lib${name}.so.1.0 $out/lib/lib${name}.so.1
        ln -s lib${name}.so.1 $out/lib/lib${name}.so
        printf '%s\n' '#ifndef ${name}_H' '#define ${name}_H' 'int ${name}_init(void);' '#endif' > $out/include/${name}.h
        printf '%s\n' "prefix=$out" 'libdir=''${prefix}/lib' "Name: lib${name}" 'Version: 1.0' \
          'Libs: -L''${libdir} -l${name}' > $out/lib/pkgconfig/lib${name}.pc
        printf 'lib${name}: generated library %s of the imageless test world\n' ${toString i} \
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

  # flox/large generation 2 (large-app 1.1): the first 30 libraries of the top layer rebuilt
  # (an update of some leaf libraries), so its closure shares 284 of its 315 paths (90 %)
  # with generation 1's; top-layer libraries are linked by large-app only.
  updatedTop = 30;
  allLibs2 = builtins.concatLists (builtins.genList
    (layer: builtins.genList
      (j: if layer == layers - 1 && j < updatedTop then libRev 2 layer j else libs.${toString layer}.${toString j})
      perLayer)
    layers);

  # The application: its libraries are found through lib/large-app/libraries.
  app = version: appLibs: mk {
    name = "large-app-${version}";
    extra = { libs = appLibs; scriptText = "#!${sh}\n"; };
    script = ''
      mkdir -p $out/bin $out/lib/large-app
      for l in $libs; do echo "$l"; done > $out/lib/large-app/libraries
      printf '%s' "$scriptText" > $out/bin/large-app
      echo "echo \"large-app: \$(wc -l < $out/lib/large-app/libraries) libraries\"" >> $out/bin/large-app
      chmod 555 $out/bin/large-app
    '';
  };

  # A python3.11 site-package: 20 to 59 generated modules in 3 subpackages, metadata.
  pyPkg = i:
    let name = "pkg${pad i}"; in
    mk {
      name = "python3.11-${name}-1.0";
      script = ''
        site=$out/lib/python3.11/site-packages
        mkdir -p $site/${name}/core $site/${name}/io $site/${name}/tests $site/${name}-1.0.dist-info
        awk -v site=$site -v pkg=${name} -v n=${toString (20 + mod (i * 13) 40)} 'BEGIN {
          split("core io tests", subs, " ")
          record = site "/" pkg "-1.0.dist-info/RECORD"
          for (m = 0; m < n; m++) {
            f = site "/" pkg "/" subs[m % 3 + 1] "/mod" m ".py"
            print "\"\"\"" pkg " module " m ": generated for the imageless test world.\"\"\"" > f
            print "import math\n" > f
            for (k = 0; k < 20 + (m * 7) % 60; k++) {
              print "def f" m "_" k "(x, y=" k "):" > f
              print "    \"\"\"Return a value derived from x (" pkg ", " m ", " k ").\"\"\"" > f
              print "    return math.sqrt(abs(x * " k " + y)) + " m "\n" > f
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
  pyPkgs = builtins.genList pyPkg 60;
in
{
  # coreutils' everyday commands as busybox applets.
  large_coreutils = mk {
    name = "coreutils-9.4";
    script = ''
      mkdir -p $out/bin
      for c in cat wc ls head tail sort uniq cut tr stat du df env id basename dirname readlink find grep sed sleep true echo; do
        ln -s ${bb}/bin/busybox $out/bin/$c
      done
    '';
  };

  # A Python-like package tree: the environment's site-packages, one store path each.
  large_pydata = mk {
    name = "pydata-1.0";
    extra.pkgs = pyPkgs;
    script = ''
      mkdir -p $out/lib/python3.11 $out/nix-support
      for p in $pkgs; do echo "$p/lib/python3.11/site-packages"; done > $out/lib/python3.11/pydata.pth
      for p in $pkgs; do echo "$p"; done > $out/nix-support/site-packages
    '';
  };

  large_app = app "1.0" allLibs;
  large_app_1_1 = app "1.1" allLibs2;
}
