"""libvirt XML, one module per format a libvirt user already knows.

``pool`` (storage pool XML), ``volume`` (storage volume XML), ``network``
(network XML) and ``domain`` (domain XML) each offer three pure functions
derived from one table of field declarations (``_fields``):

* ``render(name, spec, ...)``: the XML that creates the object;
* ``patch(current, spec, ...)`` (domain, network, pool): the XML that redefines
  an existing one, its current definition with only the declared fields that
  differ set and the managed sets made exact, everything else kept;
* ``project(spec, ...)``: the desired fields as a flat dict, keyed by stable
  field paths in the manifest's own names (``memory``, ``disks[web-data].bus``,
  ``interfaces[52:54:00:aa:bb:cc].network``, ``ipv4.dhcp.hosts[<mac>].ip``);
* ``observe(xml, ...)``: the same keys read from live libvirt XML, ignoring
  whatever libvirt adds on its own (addresses, aliases, controllers, ...).

Diff by meaning is then ``project(spec) != observe(live_xml)``, key by key.

Above this package sits the observe/plan layer, which fetches XML through
``reconciler.hypervisor`` (the only module importing libvirt); below it only
the frozen specs of ``reconciler.model``. Nothing here does I/O.
"""
