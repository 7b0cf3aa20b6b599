// Package sim is the fleet simulator: synthetic patients with realistic vitals (heart rate,
// SpO2, respiratory rate, blood pressure, temperature, ACVPU consciousness) following
// clinical scenarios (stable, sepsis, hypoxia, bradycardia, sensor artefact, device offline),
// each patient a bedside monitor that enrolls and uploads through the device SDK. A run is
// deterministic for a seed. `vigil sim` and `vigil demo` drive it with Run.
package sim
