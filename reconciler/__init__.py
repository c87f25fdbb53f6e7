"""reconciler: declarative, GitOps-style reconciler for KVM/libvirt hosts.

The pipeline, one value flowing one way (each step a module of its own):

    files --manifests--> Manifest documents (with source positions)
          --model------> frozen, typed specs (units parsed)
          --observe----> live libvirt state            (hypervisor: the only libvirt import)
          --planner----> Plan of classified actions     (pure)
          --executor---> results                        (the only mutator)

The CLI and the daemon only decide when to run that pipeline.
"""

__version__ = "0.1.0"
