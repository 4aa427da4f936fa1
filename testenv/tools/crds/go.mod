// Scratch module used only to download the modules that hold the CRD files.
module iter8rs.local/testenv/crds

go 1.25
