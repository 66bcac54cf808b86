// Validates ServiceMonitor documents against the Prometheus Operator CRD's schema, as generated
// into @kubernetes-models/prometheus-operator. Run by deploy/kubernetes/validate.
import fs from "node:fs";
import yaml from "js-yaml";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

let failed = false;
for (const file of process.argv.slice(2)) {
  for (const doc of yaml.loadAll(fs.readFileSync(file, "utf8"))) {
    if (!doc || doc.kind !== "ServiceMonitor") continue;
    try {
      new ServiceMonitor(doc).validate();
      console.log(`${file}: ServiceMonitor/${doc.metadata.name} passed (prometheus-operator CRD schema)`);
    } catch (error) {
      console.error(`${file}: ServiceMonitor/${doc.metadata?.name}: ${error.message}`);
      failed = true;
    }
  }
}
process.exit(failed ? 1 : 0);
