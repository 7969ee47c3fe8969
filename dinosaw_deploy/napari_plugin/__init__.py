"""The napari plugin: paint scribbles, see the visible region's labels, run the whole scan.

Only napari imports this package (through ``napari.yaml``); ``import dinosaw_deploy`` never does.
The paint -> train -> predict loop (:mod:`.session`) and the viewport arithmetic (:mod:`.viewport`)
need no Qt; :mod:`.widget` and :mod:`.reader` are the napari side.
"""
